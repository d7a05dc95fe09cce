//! The unary gRPC calls `Pull`, `ModifyAckDeadline` and `Acknowledge` of
//! `google.pubsub.v1.Subscriber`, over a tonic channel, authenticated with the same
//! `google-cloud-auth` credentials as the official crate's clients (which keep these calls
//! private). Only the messages' fields the worker uses are declared; their numbers are the
//! ones of `google/pubsub/v1/pubsub.proto`.
//!
//! gRPC, not REST: Pub/Sub's native protocol, and on the emulator a pull takes ~1 ms over
//! gRPC but ~9 ms over REST (measured), which bounds the rate of short jobs.

use std::collections::BTreeMap;
use std::time::Duration;

use google_cloud_auth::credentials::{CacheableResource, Credentials};
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use super::{Code, PubsubError};

/// Time limit of one receive call.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Time limit of opening the connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct PullRequest {
    #[prost(string, tag = "1")]
    pub subscription: String,
    #[prost(bool, tag = "2")]
    pub return_immediately: bool,
    #[prost(int32, tag = "3")]
    pub max_messages: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct PullResponse {
    #[prost(message, repeated, tag = "1")]
    pub received_messages: Vec<ReceivedMessage>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct ReceivedMessage {
    #[prost(string, tag = "1")]
    pub ack_id: String,
    #[prost(message, optional, tag = "2")]
    pub message: Option<PubsubMessage>,
    #[prost(int32, tag = "3")]
    pub delivery_attempt: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct PubsubMessage {
    #[prost(bytes = "vec", tag = "1")]
    pub data: Vec<u8>,
    #[prost(btree_map = "string, string", tag = "2")]
    pub attributes: BTreeMap<String, String>,
    #[prost(string, tag = "3")]
    pub message_id: String,
    #[prost(message, optional, tag = "4")]
    pub publish_time: Option<Timestamp>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct Timestamp {
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct ModifyAckDeadlineRequest {
    #[prost(string, tag = "1")]
    pub subscription: String,
    #[prost(int32, tag = "3")]
    pub ack_deadline_seconds: i32,
    #[prost(string, repeated, tag = "4")]
    pub ack_ids: Vec<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct AcknowledgeRequest {
    #[prost(string, tag = "1")]
    pub subscription: String,
    #[prost(string, repeated, tag = "2")]
    pub ack_ids: Vec<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct Empty {}

/// `google.iam.v1.TestIamPermissionsRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct TestIamPermissionsRequest {
    #[prost(string, tag = "1")]
    pub resource: String,
    #[prost(string, repeated, tag = "2")]
    pub permissions: Vec<String>,
}

/// `google.iam.v1.TestIamPermissionsResponse`: the permissions the caller has.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct TestIamPermissionsResponse {
    #[prost(string, repeated, tag = "1")]
    pub permissions: Vec<String>,
}

/// A gRPC client for the receive calls. Cheap to clone (one HTTP/2 connection, multiplexed).
#[derive(Clone)]
pub(super) struct Grpc {
    channel: Channel,
    endpoint: String,
    credentials: Credentials,
}

impl std::fmt::Debug for Grpc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grpc")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl Grpc {
    /// A client of `endpoint` (`https://...`: TLS with the system's roots; `http://...`: the
    /// emulator). The connection opens at the first call.
    pub(super) fn new(endpoint: String, credentials: Credentials) -> Result<Grpc, String> {
        let endpoint = endpoint.trim_end_matches('/').to_string();
        let mut ep = Endpoint::from_shared(endpoint.clone())
            .map_err(|e| format!("invalid endpoint {endpoint}: {e}"))?
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(CALL_TIMEOUT);
        if endpoint.starts_with("https://") {
            ep = ep
                .tls_config(ClientTlsConfig::new().with_native_roots())
                .map_err(|e| format!("TLS for {endpoint}: {e}"))?;
        }
        Ok(Grpc {
            channel: ep.connect_lazy(),
            endpoint,
            credentials,
        })
    }

    /// One unary call of `google.pubsub.v1.Subscriber/<method>` about `subscription`.
    pub(super) async fn call<Req, Resp>(
        &self,
        operation: &'static str,
        subscription: &str,
        method: &'static str,
        request: Req,
    ) -> Result<Resp, PubsubError>
    where
        Req: prost::Message + Send + Sync + 'static,
        Resp: prost::Message + Default + Send + Sync + 'static,
    {
        let service = "google.pubsub.v1.Subscriber";
        self.call_service(operation, subscription, service, method, request)
            .await
    }

    /// One unary call of `<service>/<method>` about `resource` (a subscription or topic).
    pub(super) async fn call_service<Req, Resp>(
        &self,
        operation: &'static str,
        subscription: &str,
        service: &'static str,
        method: &'static str,
        request: Req,
    ) -> Result<Resp, PubsubError>
    where
        Req: prost::Message + Send + Sync + 'static,
        Resp: prost::Message + Default + Send + Sync + 'static,
    {
        let fail = |detail: String, transient: bool| {
            let mut e = PubsubError::new(operation, subscription, detail);
            e.transient = transient;
            e
        };
        let headers = match self.credentials.headers(http::Extensions::new()).await {
            Ok(CacheableResource::New { data, .. }) => data,
            Ok(CacheableResource::NotModified) => http::HeaderMap::new(),
            Err(e) => {
                let transient = e.is_transient();
                // No source attached: the auth library's error may quote a token answer;
                // the detail carries its redacted text.
                return Err(fail(super::credentials::describe_error(&e), transient));
            }
        };
        let mut grpc = tonic::client::Grpc::new(self.channel.clone());
        grpc.ready().await.map_err(|e| {
            fail(
                format!(
                    "no connection to {} (is the server running and reachable?)",
                    self.endpoint
                ),
                true,
            )
            .with_source(e)
        })?;
        let mut request = tonic::Request::new(request);
        *request.metadata_mut() = tonic::metadata::MetadataMap::from_headers(headers);
        // Routes the call to the subscription's region, as the official clients do.
        let param = if service.ends_with("Subscriber") {
            "subscription"
        } else {
            "resource"
        };
        if let Ok(v) = format!("{param}={subscription}").parse() {
            request.metadata_mut().insert("x-goog-request-params", v);
        }
        let path = http::uri::PathAndQuery::try_from(format!("/{service}/{method}"))
            .expect("a valid method path");
        grpc.unary(request, path, tonic_prost::ProstCodec::default())
            .await
            .map(tonic::Response::into_inner)
            .map_err(|status| status_error(operation, subscription, &self.endpoint, status))
    }
}

/// A non-OK status as a [`PubsubError`].
fn status_error(
    operation: &'static str,
    subscription: &str,
    endpoint: &str,
    status: tonic::Status,
) -> PubsubError {
    use tonic::Code as G;
    let detail = match status.code() {
        // No connection (refused, reset, timed out): say where it was going.
        G::Unavailable | G::Unknown | G::DeadlineExceeded | G::Cancelled => format!(
            "no answer from {endpoint} (is the server running and reachable?): {:?}: {}",
            status.code(),
            status.message()
        ),
        code => format!("{code:?}: {}", status.message()),
    };
    let mut e = PubsubError::new(operation, subscription, detail);
    e.code = match status.code() {
        G::NotFound => Some(Code::NotFound),
        G::PermissionDenied => Some(Code::PermissionDenied),
        G::InvalidArgument => Some(Code::InvalidArgument),
        G::Unauthenticated => Some(Code::Unauthenticated),
        G::Unimplemented => Some(Code::Unimplemented),
        _ => None,
    };
    e.transient = matches!(
        status.code(),
        G::Unavailable
            | G::DeadlineExceeded
            | G::ResourceExhausted
            | G::Aborted
            | G::Internal
            | G::Unknown
            | G::Cancelled
    );
    e
}
