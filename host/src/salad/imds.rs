//! A client of SaladCloud's instance metadata service (IMDS, `salad-cloud-imds.yaml`):
//! `GET /v1/status`, `GET /v1/token`, `POST /v1/reallocate`, `GET`/`PUT /v1/deletion-cost`.
//!
//! Every request carries the header `Metadata: true` (SaladCloud refuses any without it),
//! goes straight to the service's address over a fresh plain TCP connection (never through a
//! proxy: no proxy setting is read, and none could be), carries no `X-Forwarded-*` header, and
//! is bounded by [`ImdsConfig::timeout`] as a whole (connect, send, answer). An error is
//! returned, never a panic: callers log it and go on (the service is an aid, never a
//! dependency of a job).

use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};

/// SaladCloud's IMDS address (`SALAD_IMDS_URL`'s default).
pub const DEFAULT_IMDS_URL: &str = "http://169.254.169.254";
/// The longest one IMDS call may take, connect to answer: 2 s. The service is on the node's
/// link, so more means it is not there.
pub const DEFAULT_IMDS_TIMEOUT: Duration = Duration::from_secs(2);
/// The highest deletion cost (SaladCloud's int32 field; Kelpie's "do not remove me now").
pub const MAX_DELETION_COST: i32 = 999_999_999;
/// The longest reason `/v1/reallocate` accepts, in characters (and the shortest is 1).
pub const MAX_REASON_CHARS: usize = 1000;

/// Where the service is and how long a call may take.
#[derive(Clone, Debug)]
pub struct ImdsConfig {
    /// `SALAD_IMDS_URL`: `http://host[:port]` (plain HTTP, as SaladCloud serves it).
    pub base_url: String,
    /// Each call's bound, connect to answer ([`DEFAULT_IMDS_TIMEOUT`]).
    pub timeout: Duration,
}

impl Default for ImdsConfig {
    fn default() -> Self {
        ImdsConfig {
            base_url: DEFAULT_IMDS_URL.to_owned(),
            timeout: DEFAULT_IMDS_TIMEOUT,
        }
    }
}

/// Why an IMDS call did not succeed.
#[derive(Debug)]
pub enum ImdsError {
    /// `SALAD_IMDS_URL` is not `http://host[:port]`.
    BadUrl(String),
    /// The call did not complete within the timeout.
    Timeout(Duration),
    /// No connection, or it broke.
    Unreachable(String),
    /// The service answered with an error status.
    Status(u16),
    /// The service's answer is not the documented JSON.
    Body(String),
}

impl std::fmt::Display for ImdsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ImdsError::BadUrl(u) => {
                write!(f, "SALAD_IMDS_URL must be http://host[:port], not {u:?}")
            }
            ImdsError::Timeout(t) => {
                write!(
                    f,
                    "the instance metadata service did not answer within {t:?}"
                )
            }
            ImdsError::Unreachable(e) => {
                write!(f, "cannot reach the instance metadata service: {e}")
            }
            ImdsError::Status(s) => write!(f, "the instance metadata service answered {s}"),
            ImdsError::Body(e) => {
                write!(
                    f,
                    "unexpected answer from the instance metadata service: {e}"
                )
            }
        }
    }
}

impl std::error::Error for ImdsError {}

/// `GET /v1/status`: the container's probe results as SaladCloud sees them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct Status {
    /// The readiness probe passes (or none is configured).
    pub ready: bool,
    /// The startup probe passed (or none is configured).
    pub started: bool,
}

#[derive(Deserialize)]
struct Token {
    jwt: String,
}

#[derive(Deserialize, Serialize)]
struct DeletionCost {
    deletion_cost: i32,
}

#[derive(Serialize)]
struct Reallocate<'a> {
    reason: &'a str,
}

/// The client. Cheap to clone; holds no connection between calls.
#[derive(Clone, Debug)]
pub struct Imds {
    /// `host:port`, connected to directly.
    authority: String,
    timeout: Duration,
}

impl Imds {
    /// A client of the service at `config.base_url`. `Err`: not an `http://host[:port]` URL.
    pub fn new(config: &ImdsConfig) -> Result<Imds, ImdsError> {
        let bad = || ImdsError::BadUrl(config.base_url.clone());
        let uri: http::Uri = config.base_url.parse().map_err(|_| bad())?;
        if uri.scheme_str() != Some("http") || !uri.path().trim_end_matches('/').is_empty() {
            return Err(bad());
        }
        let host = uri.host().ok_or_else(bad)?;
        let authority = format!("{host}:{}", uri.port_u16().unwrap_or(80));
        Ok(Imds {
            authority,
            timeout: config.timeout,
        })
    }

    /// `GET /v1/status`.
    pub async fn status(&self) -> Result<Status, ImdsError> {
        let body = self.call(Method::GET, "/v1/status", None).await?;
        parse(&body)
    }

    /// `GET /v1/token`: the workload identity JWT (valid about 5 minutes). Never log it.
    pub async fn token(&self) -> Result<String, ImdsError> {
        let body = self.call(Method::GET, "/v1/token", None).await?;
        Ok(parse::<Token>(&body)?.jwt)
    }

    /// `GET /v1/deletion-cost`.
    pub async fn deletion_cost(&self) -> Result<i32, ImdsError> {
        let body = self.call(Method::GET, "/v1/deletion-cost", None).await?;
        Ok(parse::<DeletionCost>(&body)?.deletion_cost)
    }

    /// `PUT /v1/deletion-cost` `{"deletion_cost": cost}`: on a voluntary scale-in, instances
    /// with the lowest cost are removed first.
    pub async fn set_deletion_cost(&self, cost: i32) -> Result<(), ImdsError> {
        let body = serde_json::to_vec(&DeletionCost {
            deletion_cost: cost,
        })
        .expect("serializable");
        self.call(Method::PUT, "/v1/deletion-cost", Some(body))
            .await
            .map(drop)
    }

    /// `POST /v1/reallocate` `{"reason": ...}`: SaladCloud moves this container to another
    /// node and keeps this node from the workload for a long time (48 h), so only for a node
    /// that is itself the problem. `reason` is cut to [`MAX_REASON_CHARS`] characters; an
    /// empty one becomes "unspecified".
    pub async fn reallocate(&self, reason: &str) -> Result<(), ImdsError> {
        let reason = reallocation_reason(reason);
        let body = serde_json::to_vec(&Reallocate { reason: &reason }).expect("serializable");
        self.call(Method::POST, "/v1/reallocate", Some(body))
            .await
            .map(drop)
    }

    /// One request on a fresh connection, bounded by the timeout; the answer's body on 2xx.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Bytes, ImdsError> {
        tokio::time::timeout(self.timeout, self.exchange(method, path, body))
            .await
            .map_err(|_| ImdsError::Timeout(self.timeout))?
    }

    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Bytes, ImdsError> {
        let unreachable = |e: &dyn std::fmt::Display| ImdsError::Unreachable(e.to_string());
        let stream = tokio::net::TcpStream::connect(&self.authority)
            .await
            .map_err(|e| unreachable(&e))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| unreachable(&e))?;
        let driver = tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, &self.authority)
            .header("Metadata", "true");
        if body.is_some() {
            request = request.header(http::header::CONTENT_TYPE, "application/json");
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| unreachable(&e))?;
        let answer = async {
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| unreachable(&e))?;
            let status = response.status();
            let bytes = response
                .into_body()
                .collect()
                .await
                .map_err(|e| unreachable(&e))?
                .to_bytes();
            if !status.is_success() {
                return Err(ImdsError::Status(status.as_u16()));
            }
            Ok(bytes)
        }
        .await;
        driver.abort();
        answer
    }
}

/// `reason` as `/v1/reallocate` accepts it: 1 to [`MAX_REASON_CHARS`] characters.
pub fn reallocation_reason(reason: &str) -> String {
    let reason = reason.trim();
    if reason.is_empty() {
        return "unspecified".to_owned();
    }
    reason.chars().take(MAX_REASON_CHARS).collect()
}

fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, ImdsError> {
    serde_json::from_slice(body).map_err(|e| ImdsError::Body(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let url = |u: &str| {
            Imds::new(&ImdsConfig {
                base_url: u.to_owned(),
                timeout: DEFAULT_IMDS_TIMEOUT,
            })
            .map(|c| c.authority)
            .ok()
        };
        assert_eq!(url(DEFAULT_IMDS_URL).as_deref(), Some("169.254.169.254:80"));
        assert_eq!(
            url("http://127.0.0.1:8080/").as_deref(),
            Some("127.0.0.1:8080")
        );
        assert_eq!(url("https://169.254.169.254"), None);
        assert_eq!(url("http://127.0.0.1/v1"), None);
        assert_eq!(url("169.254.169.254"), None);
    }

    #[test]
    fn reasons_fit_the_documented_length() {
        assert_eq!(reallocation_reason("  "), "unspecified");
        assert_eq!(reallocation_reason(" clock off "), "clock off");
        let long = "é".repeat(1500);
        assert_eq!(reallocation_reason(&long).chars().count(), MAX_REASON_CHARS);
    }
}
