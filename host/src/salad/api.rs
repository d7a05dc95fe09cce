//! A client of SaladCloud's public API (`salad-cloud.yaml`, served at
//! [`DEFAULT_API_URL`]) for the one container group `taskhost autoscale` manages:
//!
//! - `GET /organizations/{org}/projects/{project}/containers/{group}` → 200, the group
//!   (`replicas`, `current_state.status`);
//! - `PATCH` the same path, `Content-Type: application/merge-patch+json`, `{"replicas": N}`
//!   (0..=500) → 200;
//! - `POST .../start` and `POST .../stop` → 202.
//!
//! Every request carries the API key in the header `Salad-Api-Key` and is bounded by
//! [`ApiConfig::timeout`]. Names are checked against the API's pattern before they go into a
//! path. **Secrets:** the key is only ever a header value: no `Debug`, error or log line shows
//! it. No proxy setting is read (the library reads no environment).

use std::fmt;
use std::time::Duration;

use serde::Deserialize;

use super::autoscale::{Group, MAX_REPLICAS};

/// SaladCloud's public API (`SALAD_API_URL`'s default).
pub const DEFAULT_API_URL: &str = "https://api.salad.com/api/public";
/// The longest one call may take: 30 s.
pub const DEFAULT_API_TIMEOUT: Duration = Duration::from_secs(30);

/// An organization, project or container group name: `^[a-z][a-z0-9-]{0,61}[a-z0-9]$`, as
/// the API defines them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Name(String);

impl Name {
    /// `Err`: why `name` is not one (`what` names the setting).
    pub fn parse(what: &str, name: &str) -> Result<Name, ApiError> {
        let b = name.as_bytes();
        let ok = (2..=63).contains(&b.len())
            && b[0].is_ascii_lowercase()
            && b.iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
            && b[b.len() - 1] != b'-';
        if ok {
            Ok(Name(name.to_owned()))
        } else {
            Err(ApiError::Setting(format!(
                "{what} {name:?} is not a SaladCloud name (2 to 63 of a-z, 0-9 and -, starting \
                 with a letter, not ending with -)"
            )))
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The API key (`SALAD_API_KEY`): shown nowhere.
#[derive(Clone)]
pub struct ApiKey(String);

impl ApiKey {
    /// Wraps the key; `Err` when it is empty or cannot be a header value.
    pub fn new(key: String) -> Result<ApiKey, ApiError> {
        if key.is_empty() || reqwest::header::HeaderValue::from_str(&key).is_err() {
            return Err(ApiError::Setting(
                "SALAD_API_KEY is empty or not a valid header value".into(),
            ));
        }
        Ok(ApiKey(key))
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

/// Where the API is and which group to manage.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    /// `SALAD_API_URL` ([`DEFAULT_API_URL`]).
    pub base_url: String,
    /// `SALAD_ORGANIZATION`.
    pub organization: Name,
    /// `SALAD_PROJECT`.
    pub project: Name,
    /// `SALAD_CONTAINER_GROUP`.
    pub container_group: Name,
    /// `SALAD_API_KEY`.
    pub api_key: ApiKey,
    /// Each call's bound ([`DEFAULT_API_TIMEOUT`]).
    pub timeout: Duration,
}

/// Why a call did not succeed. Never contains the API key.
#[derive(Debug)]
pub enum ApiError {
    /// A setting is not usable (a name, the key, the URL).
    Setting(String),
    /// No answer: no connection, or none within the timeout.
    Unreachable(String),
    /// The API answered with an error status (401/403: the key; 404: the names).
    Status {
        /// The HTTP status.
        status: u16,
        /// The call (`GET container group`, ...).
        call: &'static str,
        /// The API's explanation (its `detail` or `title`), cut to 300 characters.
        message: String,
    },
    /// An answer that is not the documented JSON.
    Body(String),
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApiError::Setting(s) => f.write_str(s),
            ApiError::Unreachable(e) => write!(f, "cannot reach SaladCloud's API: {e}"),
            ApiError::Status {
                status,
                call,
                message,
            } => {
                let hint = match status {
                    401 | 403 => " (check SALAD_API_KEY and that it may manage the group)",
                    404 => " (check SALAD_ORGANIZATION, SALAD_PROJECT and SALAD_CONTAINER_GROUP)",
                    _ => "",
                };
                write!(
                    f,
                    "SaladCloud's API refused {call}: {status} {message}{hint}"
                )
            }
            ApiError::Body(e) => write!(f, "SaladCloud's API answered unexpectedly: {e}"),
        }
    }
}

impl std::error::Error for ApiError {}

/// The client for one container group.
#[derive(Clone, Debug)]
pub struct SaladApi {
    http: reqwest::Client,
    group_url: String,
    key: ApiKey,
}

#[derive(Deserialize)]
struct GroupBody {
    replicas: u32,
    current_state: StateBody,
}

#[derive(Deserialize)]
struct StateBody {
    status: String,
}

impl SaladApi {
    /// A client; contacts nothing yet.
    pub fn new(config: &ApiConfig) -> Result<SaladApi, ApiError> {
        let base = config.base_url.trim_end_matches('/');
        if !(base.starts_with("https://") || base.starts_with("http://")) {
            return Err(ApiError::Setting(format!(
                "SALAD_API_URL must be an http(s) URL, not {base:?}"
            )));
        }
        // No redirects: the key is a custom header, which reqwest would send on to whatever
        // host a redirect names (it strips only the standard credential headers).
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
            .map_err(|e| ApiError::Setting(format!("cannot build the HTTP client: {e}")))?;
        Ok(SaladApi {
            http,
            group_url: format!(
                "{base}/organizations/{}/projects/{}/containers/{}",
                config.organization.as_str(),
                config.project.as_str(),
                config.container_group.as_str()
            ),
            key: config.api_key.clone(),
        })
    }

    /// `GET` the group: its replica count and whether it is started (`running`, `pending`,
    /// `deploying`) or not (`stopped`, `succeeded`, `failed`).
    pub async fn group(&self) -> Result<Group, ApiError> {
        let call = "GET container group";
        let body = self.send(call, self.http.get(&self.group_url), 200).await?;
        let group: GroupBody =
            serde_json::from_slice(&body).map_err(|e| ApiError::Body(format!("{call}: {e}")))?;
        let started = match group.current_state.status.as_str() {
            "running" | "pending" | "deploying" => true,
            "stopped" | "succeeded" | "failed" => false,
            other => {
                return Err(ApiError::Body(format!(
                    "{call}: unknown status {:?}",
                    other.chars().take(40).collect::<String>()
                )));
            }
        };
        Ok(Group {
            replicas: group.replicas,
            started,
        })
    }

    /// `PATCH` the group's replica count (`0..=`[`MAX_REPLICAS`]).
    pub async fn set_replicas(&self, replicas: u32) -> Result<(), ApiError> {
        if replicas > MAX_REPLICAS {
            return Err(ApiError::Setting(format!(
                "{replicas} replicas is above SaladCloud's limit of {MAX_REPLICAS}"
            )));
        }
        let request = self
            .http
            .patch(&self.group_url)
            .header("Content-Type", "application/merge-patch+json")
            .body(serde_json::json!({ "replicas": replicas }).to_string());
        self.send("PATCH container group replicas", request, 200)
            .await
            .map(drop)
    }

    /// `POST .../start`.
    pub async fn start(&self) -> Result<(), ApiError> {
        let request = self.http.post(format!("{}/start", self.group_url));
        self.send("POST start", request, 202).await.map(drop)
    }

    /// `POST .../stop`.
    pub async fn stop(&self) -> Result<(), ApiError> {
        let request = self.http.post(format!("{}/stop", self.group_url));
        self.send("POST stop", request, 202).await.map(drop)
    }

    async fn send(
        &self,
        call: &'static str,
        request: reqwest::RequestBuilder,
        expect: u16,
    ) -> Result<Vec<u8>, ApiError> {
        let response = request
            .header("Salad-Api-Key", &self.key.0)
            .header("Accept", "application/json")
            .send()
            .await
            .map_err(|e| ApiError::Unreachable(format!("{call}: {}", without_url(&e))))?;
        let status = response.status().as_u16();
        let body = response
            .bytes()
            .await
            .map_err(|e| ApiError::Unreachable(format!("{call}: {}", without_url(&e))))?;
        // 2xx other than the documented one is accepted: the call did what was asked.
        if status == expect || (200..300).contains(&status) {
            return Ok(body.to_vec());
        }
        let message = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| {
                v.get("detail")
                    .or_else(|| v.get("title"))
                    .and_then(|m| m.as_str().map(str::to_owned))
            })
            .unwrap_or_default()
            .chars()
            .take(300)
            .collect();
        Err(ApiError::Status {
            status,
            call,
            message,
        })
    }
}

/// A reqwest error's text without its URL (the error names the URL otherwise; it holds no
/// secret, but the kind of failure is what the operator needs).
fn without_url(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "no answer in time"
    } else if e.is_connect() {
        "no connection"
    } else {
        "the request failed"
    };
    let mut text = kind.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text = format!("{text}: {s}");
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_api_pattern() {
        for good in ["ab", "my-org", "a1", &"a".repeat(63)] {
            assert!(Name::parse("x", good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "a",
            "1abc",
            "Abc",
            "ab-",
            "a_b",
            "a/b",
            "a.b",
            &"a".repeat(64),
            "ab%2f",
        ] {
            assert!(Name::parse("x", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_key_is_never_shown() {
        let key = ApiKey::new("salad_key_SECRET".into()).unwrap();
        assert!(!format!("{key:?}").contains("SECRET"));
        assert!(ApiKey::new(String::new()).is_err());
        assert!(ApiKey::new("a\nb".into()).is_err());
    }
}
