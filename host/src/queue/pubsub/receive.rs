//! Receiving from Pub/Sub with the unary REST calls `:pull`, `:modifyAckDeadline` and
//! `:acknowledge` (Pub/Sub and the emulator both serve them), authenticated with the same
//! `google-cloud-auth` credentials as the official crate's clients.
//!
//! Pulls return at once (`returnImmediately`): a pull that waited on the server could not be
//! abandoned without stranding whatever it was about to return (those messages would come
//! back only when their lease lapsed), and the worker must be able to stop receiving at once.
//! The worker waits between empty pulls instead.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine as _;
use google_cloud_auth::credentials::{CacheableResource, Credentials};
use serde::Deserialize;
use serde_json::json;

use super::{MIN_ACK_DEADLINE_SECS, Pubsub, PubsubError};
use crate::queue::{IncomingMessage, MAX_ACK_DEADLINE_SECS, Received, Stamp};

/// Time limit of one receive call.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// At most this many ack ids per `modifyAckDeadline` / `acknowledge` call (Pub/Sub's request
/// size limit is 512 KB; an ack id is ~200 bytes).
const MAX_ACK_IDS_PER_CALL: usize = 1000;

/// A REST client for the receive calls. Cheap to clone.
#[derive(Clone)]
pub(super) struct Rest {
    http: reqwest::Client,
    endpoint: String,
    credentials: Credentials,
}

impl std::fmt::Debug for Rest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rest")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl Rest {
    pub(super) fn new(endpoint: String, credentials: Credentials) -> Result<Rest, String> {
        let http = reqwest::Client::builder()
            .timeout(CALL_TIMEOUT)
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        Ok(Rest {
            http,
            endpoint: endpoint.trim_end_matches('/').to_string(),
            credentials,
        })
    }

    /// POSTs `body` to `<endpoint>/v1/<subscription>:<verb>` and returns the JSON answer.
    async fn call(
        &self,
        operation: &'static str,
        subscription: &str,
        verb: &str,
        body: serde_json::Value,
    ) -> Result<serde_json::Value, PubsubError> {
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
                return Err(fail(
                    "could not obtain credentials (check GOOGLE_APPLICATION_CREDENTIALS)".into(),
                    transient,
                )
                .with_source(e));
            }
        };
        let url = format!("{}/v1/{subscription}:{verb}", self.endpoint);
        let response = self
            .http
            .post(&url)
            .headers(headers)
            .json(&body)
            .send()
            .await
            .map_err(|e| {
                fail(
                    format!(
                        "no answer from {} (is the server running and reachable?)",
                        self.endpoint
                    ),
                    true,
                )
                .with_source(e)
            })?;
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|e| fail(format!("answer cut short: {e}"), true))?;
        if status.is_success() {
            return serde_json::from_str(if text.trim().is_empty() { "{}" } else { &text })
                .map_err(|e| fail(format!("unreadable answer: {e}"), false));
        }
        Err(http_error(operation, subscription, status, &text))
    }
}

/// A non-2xx answer as a [`PubsubError`]: Google's `{"error": {code, message, status}}` when
/// the body has it.
fn http_error(
    operation: &'static str,
    subscription: &str,
    status: reqwest::StatusCode,
    body: &str,
) -> PubsubError {
    #[derive(Deserialize, Default)]
    struct Body {
        #[serde(default)]
        error: Detail,
    }
    #[derive(Deserialize, Default)]
    struct Detail {
        #[serde(default)]
        message: String,
        #[serde(default)]
        status: String,
    }
    let parsed: Body = serde_json::from_str(body).unwrap_or_default();
    let name = if parsed.error.status.is_empty() {
        status.to_string()
    } else {
        parsed.error.status.clone()
    };
    let mut e = PubsubError::new(
        operation,
        subscription,
        format!("{name}: {}", parsed.error.message),
    );
    e.code = match parsed.error.status.as_str() {
        "NOT_FOUND" => Some(super::Code::NotFound),
        "PERMISSION_DENIED" => Some(super::Code::PermissionDenied),
        "INVALID_ARGUMENT" => Some(super::Code::InvalidArgument),
        "UNAUTHENTICATED" => Some(super::Code::Unauthenticated),
        _ if status == reqwest::StatusCode::NOT_FOUND => Some(super::Code::NotFound),
        _ => None,
    };
    e.transient = status.is_server_error()
        || status == reqwest::StatusCode::TOO_MANY_REQUESTS
        || status == reqwest::StatusCode::REQUEST_TIMEOUT
        || matches!(
            parsed.error.status.as_str(),
            "UNAVAILABLE" | "DEADLINE_EXCEEDED" | "RESOURCE_EXHAUSTED" | "ABORTED" | "INTERNAL"
        );
    e
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PullResponse {
    #[serde(default)]
    received_messages: Vec<ReceivedJson>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReceivedJson {
    ack_id: String,
    message: MessageJson,
    #[serde(default)]
    delivery_attempt: Option<u32>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MessageJson {
    #[serde(default)]
    data: String,
    #[serde(default)]
    attributes: BTreeMap<String, String>,
    #[serde(default)]
    message_id: String,
    #[serde(default)]
    publish_time: String,
}

impl Pubsub {
    /// The deadline Pub/Sub will accept: 10..=600 s (the emulator takes any from 1 s).
    fn clamp_deadline(&self, d: Duration) -> u64 {
        let min = if self.emulator {
            1
        } else {
            MIN_ACK_DEADLINE_SECS
        };
        d.as_secs().clamp(min.into(), MAX_ACK_DEADLINE_SECS.into())
    }

    pub(super) fn remember_deadline(&self, subscription: &str, secs: u64) {
        let mut known = self
            .known_deadlines
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        known.insert(subscription.to_owned(), secs);
    }

    /// Leases at most `max` messages and sets their deadline to `ack_deadline` from now. The
    /// pull itself starts the subscription's deadline: when that is known to be
    /// `ack_deadline` (see `subscription_exists`), nothing more is sent; else one
    /// `modifyAckDeadline` follows the pull.
    pub async fn pull(
        &self,
        sub_id: &str,
        max: usize,
        ack_deadline: Duration,
    ) -> Result<Vec<Received>, PubsubError> {
        let name = self.subscription_path(sub_id);
        let pulled_at = Stamp::now();
        let answer = self
            .rest
            .call(
                "pull",
                &name,
                "pull",
                json!({"maxMessages": max, "returnImmediately": true}),
            )
            .await?;
        let answer: PullResponse = serde_json::from_value(answer)
            .map_err(|e| PubsubError::new("pull", &name, format!("unreadable answer: {e}")))?;
        if answer.received_messages.is_empty() {
            return Ok(Vec::new());
        }
        let ack_ids: Vec<String> = answer
            .received_messages
            .iter()
            .map(|r| r.ack_id.clone())
            .collect();
        let extended_at = Stamp::now();
        let deadline_secs = self.clamp_deadline(ack_deadline);
        let known = {
            let known = self
                .known_deadlines
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            known.get(&name).copied()
        };
        let leased_until = if known == Some(deadline_secs) {
            pulled_at.plus(Duration::from_secs(deadline_secs))
        } else {
            self.extend_pulled(
                sub_id,
                &name,
                &ack_ids,
                ack_deadline,
                pulled_at,
                extended_at,
            )
            .await
        };

        let engine = base64::engine::general_purpose::STANDARD;
        answer
            .received_messages
            .into_iter()
            .map(|r| {
                let data = engine.decode(r.message.data.as_bytes()).map_err(|e| {
                    PubsubError::new("pull", &name, format!("message data is not base64: {e}"))
                })?;
                Ok(Received {
                    message: IncomingMessage {
                        message_id: r.message.message_id,
                        data,
                        attributes: r.message.attributes,
                        delivery_attempt: r.delivery_attempt.filter(|&n| n > 0),
                        publish_time_ms: crate::queue::parse_rfc3339_utc_ms(
                            &r.message.publish_time,
                        ),
                    },
                    ack_id: r.ack_id,
                    leased_until,
                })
            })
            .collect()
    }

    /// Sets the deadline of just-pulled messages; returns their guaranteed end.
    async fn extend_pulled(
        &self,
        sub_id: &str,
        name: &str,
        ack_ids: &[String],
        ack_deadline: Duration,
        pulled_at: Stamp,
        extended_at: Stamp,
    ) -> Stamp {
        let secs = self.clamp_deadline(ack_deadline);
        match self
            .modify_ack_deadline(sub_id, ack_ids, ack_deadline)
            .await
        {
            Ok(_) => extended_at.plus(Duration::from_secs(secs)),
            Err(e) => {
                // The subscription's own deadline still holds, at least Pub/Sub's minimum;
                // the lease keeper retries the extension at once.
                tracing::warn!(subscription = %name, error = %e, "could not set the deadline of pulled messages");
                pulled_at.plus(Duration::from_secs(MIN_ACK_DEADLINE_SECS.into()).min(ack_deadline))
            }
        }
    }

    /// Sets the deadline of `ack_ids` to `deadline` from now (zero: hand back now). Pub/Sub's
    /// at-least-once subscriptions accept expired ack ids silently, so no lease is ever
    /// reported lost here (an empty list).
    pub async fn modify_ack_deadline(
        &self,
        sub_id: &str,
        ack_ids: &[String],
        deadline: Duration,
    ) -> Result<Vec<String>, PubsubError> {
        let name = self.subscription_path(sub_id);
        let secs = if deadline.is_zero() {
            0
        } else {
            self.clamp_deadline(deadline)
        };
        for chunk in ack_ids.chunks(MAX_ACK_IDS_PER_CALL) {
            self.rest
                .call(
                    "modify ack deadline",
                    &name,
                    "modifyAckDeadline",
                    json!({"ackIds": chunk, "ackDeadlineSeconds": secs}),
                )
                .await?;
        }
        Ok(Vec::new())
    }

    /// Acknowledges `ack_ids`.
    pub async fn acknowledge(&self, sub_id: &str, ack_ids: &[String]) -> Result<(), PubsubError> {
        let name = self.subscription_path(sub_id);
        for chunk in ack_ids.chunks(MAX_ACK_IDS_PER_CALL) {
            self.rest
                .call(
                    "acknowledge",
                    &name,
                    "acknowledge",
                    json!({"ackIds": chunk}),
                )
                .await?;
        }
        Ok(())
    }
}
