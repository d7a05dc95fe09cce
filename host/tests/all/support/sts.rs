//! A local stand-in for Google's Security Token Service (`POST https://sts.googleapis.com/v1/token`,
//! the token exchange of workload identity federation, RFC 8693 as Google documents it in
//! `sts.googleapis.com/v1/token`). It checks each request's shape and answers a fixed access
//! token, or refuses every exchange like STS refuses a token its provider does not accept.
//!
//! Checked: `POST /v1/token`, `Content-Type: application/x-www-form-urlencoded`, `grant_type`
//! `urn:ietf:params:oauth:grant-type:token-exchange`, `requested_token_type`
//! `urn:ietf:params:oauth:token-type:access_token`, `subject_token_type`
//! `urn:ietf:params:oauth:token-type:jwt`, the `audience` expected, a `scope`, and a
//! `subject_token`, recorded for the test to compare with what the identity source served.

use std::sync::{Arc, Mutex};

use super::http::{self, Request};

/// The access token the stand-in issues.
pub const ACCESS_TOKEN: &str = "ya29.stand-in-access-token";

#[derive(Default, Debug)]
struct State {
    subject_tokens: Vec<String>,
    violations: Vec<String>,
}

/// The stand-in, serving until the test process ends.
#[derive(Clone)]
pub struct Sts {
    url: String,
    state: Arc<Mutex<State>>,
}

impl Sts {
    /// Serves on a free local port; exchanges for `audience` succeed, unless `refuse`, when
    /// each well-formed request is answered 400 `invalid_grant` (a provider's condition not met).
    pub fn start(audience: &str, refuse: bool) -> Sts {
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        let audience = audience.to_owned();
        let url = http::serve(move |req| exchange(req, &audience, refuse, &shared));
        Sts { url, state }
    }

    /// The `token_url` to put in a credential configuration.
    pub fn token_url(&self) -> String {
        format!("{}/v1/token", self.url)
    }

    /// The subject tokens of the well-formed exchanges, in order.
    pub fn subject_tokens(&self) -> Vec<String> {
        self.state.lock().unwrap().subject_tokens.clone()
    }

    /// The requests that broke the documented shape, each with why.
    pub fn violations(&self) -> Vec<String> {
        self.state.lock().unwrap().violations.clone()
    }
}

fn exchange(
    req: &Request,
    audience: &str,
    refuse: bool,
    state: &Mutex<State>,
) -> (u16, Option<serde_json::Value>) {
    let mut st = state.lock().unwrap();
    let mut why = Vec::new();
    if (req.method.as_str(), req.target.as_str()) != ("POST", "/v1/token") {
        why.push(format!("{} {}", req.method, req.target));
    }
    if req.header("content-type") != Some("application/x-www-form-urlencoded") {
        why.push(format!("content-type {:?}", req.header("content-type")));
    }
    let form = http::form(&req.body);
    let field = |name: &str| {
        form.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    for (name, want) in [
        (
            "grant_type",
            "urn:ietf:params:oauth:grant-type:token-exchange",
        ),
        (
            "requested_token_type",
            "urn:ietf:params:oauth:token-type:access_token",
        ),
        ("subject_token_type", "urn:ietf:params:oauth:token-type:jwt"),
        ("audience", audience),
    ] {
        if field(name) != Some(want) {
            why.push(format!("{name} = {:?}, not {want:?}", field(name)));
        }
    }
    if field("scope").is_none_or(str::is_empty) {
        why.push("no scope".into());
    }
    let subject = field("subject_token").unwrap_or("");
    if subject.is_empty() {
        why.push("no subject_token".into());
    }
    if !why.is_empty() {
        st.violations.push(why.join("; "));
        return (400, Some(serde_json::json!({"error": "invalid_request"})));
    }
    st.subject_tokens.push(subject.to_owned());
    if refuse {
        return (
            400,
            Some(serde_json::json!({
                "error": "invalid_grant",
                "error_description": "The given credential is rejected by the attribute condition."
            })),
        );
    }
    (
        200,
        Some(serde_json::json!({
            "access_token": ACCESS_TOKEN,
            "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
            "token_type": "Bearer",
            "expires_in": 3600
        })),
    )
}
