//! Google credentials for Pub/Sub, from the file `GOOGLE_APPLICATION_CREDENTIALS` names (or
//! Application Default Credentials without one):
//!
//! - a service-account key (`"type": "service_account"`) or a gcloud user's credentials
//!   (`"authorized_user"`);
//! - an `external_account` credential configuration (workload identity federation, Google's
//!   format: <https://google.aip.dev/auth/4117>): no key at all. The auth library reads a
//!   subject token from the configuration's `credential_source` (on SaladCloud the instance
//!   metadata service's `GET /v1/token`, answering `{"jwt": "..."}`) and exchanges it at
//!   `token_url` (Google's STS) for a short-lived access token, again whenever it expires.
//!
//! **Secrets:** an error names the file and the field at fault, never the file's content, a
//! subject token or an access token; the auth library's own errors pass through [`redact`]
//! before they reach a message (it quotes a whole token response when the JSON field it was
//! told to read is missing).

use std::path::Path;

use google_cloud_auth::credentials::{self as gcp_credentials, Credentials};
use serde_json::Value;

use super::PubsubError;

/// The path of SaladCloud's workload identity token in its instance metadata service.
pub const SALAD_IMDS_TOKEN_PATH: &str = "/v1/token";
/// The JSON field of `/v1/token`'s answer that holds the token.
pub const SALAD_IMDS_TOKEN_FIELD: &str = "jwt";

/// The credentials in `file` (`GOOGLE_APPLICATION_CREDENTIALS`), or Application Default
/// Credentials (the well-known gcloud file, then the metadata server) when `None`.
///
/// Building contacts no server: an `external_account` credential fetches its subject token and
/// exchanges it at the first request (and again before each access token expires).
///
/// Errors name the file and what is wrong with it, never its content: it cannot be read, is
/// not JSON, is of an unsupported type, or (`external_account`) its `credential_source` at an
/// instance metadata service's `/v1/token` lacks the `Metadata: true` header or the `jwt`
/// JSON field ([`check_external_account`]).
pub fn load_credentials(file: Option<&Path>) -> Result<Credentials, PubsubError> {
    let Some(path) = file else {
        return gcp_credentials::Builder::default().build().map_err(|e| {
            PubsubError::new(
                "load credentials",
                "application default credentials",
                redact(&e.to_string()),
            )
        });
    };
    let shown = path.display().to_string();
    let fail = |detail: String| PubsubError::new("load credentials", shown.clone(), detail);
    let text = std::fs::read_to_string(path).map_err(|e| {
        fail(format!(
            "cannot read GOOGLE_APPLICATION_CREDENTIALS file: {e}"
        ))
    })?;
    let json: Value = serde_json::from_str(&text).map_err(|e| {
        fail(format!(
            "not a JSON credentials file (line {}, column {})",
            e.line(),
            e.column()
        ))
    })?;
    let kind = json
        .get("type")
        .and_then(|t| t.as_str())
        .unwrap_or("")
        .to_string();
    let built = match kind.as_str() {
        "service_account" => gcp_credentials::service_account::Builder::new(json).build(),
        "authorized_user" => gcp_credentials::user_account::Builder::new(json).build(),
        "external_account" => {
            check_external_account(&json).map_err(&fail)?;
            gcp_credentials::external_account::Builder::new(json).build()
        }
        other => {
            return Err(fail(format!(
                "unsupported credentials type `{other}`: expected a service-account key or an \
                 external_account (workload identity federation) configuration"
            )));
        }
    };
    built.map_err(|e| {
        fail(format!(
            "invalid {kind} credentials: {}",
            redact(&e.to_string())
        ))
    })
}

/// The checks of an `external_account` configuration beyond the auth library's own (which
/// needs `audience`, `subject_token_type`, `token_url` and a `credential_source`): a URL
/// source at an instance metadata service's `/v1/token` (SaladCloud's, [`SALAD_IMDS_TOKEN_PATH`])
/// must send `Metadata: true` (the service refuses any request without it) and read the JSON
/// field `jwt`. Caught here, either mistake is one sentence at startup instead of a refused
/// token exchange at every request. `Err` is that sentence.
pub fn check_external_account(config: &Value) -> Result<(), String> {
    let source = config
        .get("credential_source")
        .ok_or("external_account credentials without a `credential_source`")?;
    let Some(url) = source.get("url").and_then(Value::as_str) else {
        return Ok(());
    };
    let path = url
        .split_once("://")
        .map(|(_, rest)| rest.find('/').map_or("/", |i| &rest[i..]))
        .unwrap_or(url);
    if path != SALAD_IMDS_TOKEN_PATH {
        return Ok(());
    }
    let metadata = source
        .get("headers")
        .and_then(Value::as_object)
        .and_then(|h| {
            h.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("metadata"))
                .map(|(_, v)| v.clone())
        });
    if metadata.as_ref().and_then(Value::as_str) != Some("true") {
        return Err(format!(
            "credential_source.url {url} is the instance metadata service's token: add \
             \"headers\": {{\"Metadata\": \"true\"}} (the service refuses requests without it)"
        ));
    }
    let format = source.get("format");
    let kind = format.and_then(|f| f.get("type")).and_then(Value::as_str);
    let field = format
        .and_then(|f| f.get("subject_token_field_name"))
        .and_then(Value::as_str);
    if kind != Some("json") || field != Some(SALAD_IMDS_TOKEN_FIELD) {
        return Err(format!(
            "credential_source.url {url} answers {{\"jwt\": \"...\"}}: set \"format\": \
             {{\"type\": \"json\", \"subject_token_field_name\": \"jwt\"}}"
        ));
    }
    Ok(())
}

/// What an operator reads when no access token could be had: a hint, then `error` and its
/// sources with every token [`redact`]ed. The auth library's errors carry the reason (the
/// token source answered 403, the exchange was refused, no connection).
pub fn describe_error(error: &dyn std::error::Error) -> String {
    let mut reason = String::new();
    let mut next: Option<&dyn std::error::Error> = Some(error);
    while let Some(e) = next {
        let text = e.to_string();
        if !reason.contains(&text) {
            if !reason.is_empty() {
                reason.push_str(": ");
            }
            reason.push_str(&text);
        }
        next = e.source();
    }
    format!(
        "could not obtain credentials (check GOOGLE_APPLICATION_CREDENTIALS): {}",
        redact(&reason)
    )
}

/// `text` with every token in it replaced by `<redacted>`: a JWT (three dot-separated base64url
/// parts, the first `eyJ`, a JSON header) and a Google access token (`ya29.`). When the auth
/// library could not read a subject token, everything after `body=` goes too: it quotes the
/// token source's whole answer there, whatever shape the token has. (An answer of the token
/// exchange stays: it holds the reason, e.g. `invalid_grant`, and no token.)
pub fn redact(text: &str) -> String {
    let text = match text.find("body=") {
        Some(i) if text.contains("subject token") => format!("{}body=<redacted>", &text[..i]),
        _ => text.to_owned(),
    };
    let token_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '=');
    let mut out = String::with_capacity(text.len());
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        let secret = (word.starts_with("eyJ") && word.matches('.').count() >= 2)
            || word.starts_with("ya29.");
        out.push_str(if secret { "<redacted>" } else { word.as_str() });
        word.clear();
    };
    for c in text.chars() {
        if token_char(c) {
            word.push(c);
        } else {
            flush(&mut word, &mut out);
            out.push(c);
        }
    }
    flush(&mut word, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_file_not_its_content() {
        let dir = std::env::temp_dir().join(format!("taskhost-pubsub-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("key.json");
        std::fs::write(&file, r#"{"type":"external_thing","private_key":"SECRET"}"#).unwrap();
        let err = load_credentials(Some(&file)).unwrap_err().to_string();
        assert!(err.contains("key.json"), "{err}");
        assert!(err.contains("external_thing"), "{err}");
        assert!(!err.contains("SECRET"), "{err}");
        std::fs::write(&file, "SECRET not json").unwrap();
        let err = load_credentials(Some(&file)).unwrap_err().to_string();
        assert!(!err.contains("SECRET"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn salad(source: Value) -> Value {
        serde_json::json!({
            "type": "external_account",
            "audience": "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/s",
            "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
            "token_url": "https://sts.googleapis.com/v1/token",
            "credential_source": source,
        })
    }

    #[test]
    fn an_imds_token_source_needs_its_header_and_field() {
        let url = "http://169.254.169.254/v1/token";
        let good = serde_json::json!({
            "url": url, "headers": {"Metadata": "true"},
            "format": {"type": "json", "subject_token_field_name": "jwt"}
        });
        assert_eq!(check_external_account(&salad(good)), Ok(()));
        for (source, says) in [
            (
                serde_json::json!({"url": url, "format": {"type": "json", "subject_token_field_name": "jwt"}}),
                "Metadata",
            ),
            (
                serde_json::json!({"url": url, "headers": {"Metadata": "True "}, "format": {"type": "json", "subject_token_field_name": "jwt"}}),
                "Metadata",
            ),
            (
                serde_json::json!({"url": url, "headers": {"metadata": "true"}}),
                "subject_token_field_name",
            ),
            (
                serde_json::json!({"url": url, "headers": {"Metadata": "true"}, "format": {"type": "json", "subject_token_field_name": "token"}}),
                "\"jwt\"",
            ),
        ] {
            let err = check_external_account(&salad(source.clone())).unwrap_err();
            assert!(err.contains(says), "{source}: {err}");
        }
        // Other sources are the auth library's business.
        for source in [
            serde_json::json!({"file": "/var/run/token"}),
            serde_json::json!({"url": "http://example.test/identity"}),
        ] {
            assert_eq!(check_external_account(&salad(source)), Ok(()));
        }
        let mut none = salad(Value::Null);
        none.as_object_mut().unwrap().remove("credential_source");
        assert!(check_external_account(&none).is_err());
    }

    #[test]
    fn redact_removes_tokens_and_quoted_bodies() {
        let jwt = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJtIn0.c2ln";
        for (text, keeps) in [
            (
                format!("exchange refused: {jwt} is bad"),
                "exchange refused: ",
            ),
            (format!("token `{jwt}`"), "token `"),
            ("got ya29.a0AfH6SMB-x_y from STS".to_owned(), "got "),
            (
                format!(
                    "failed to read subject token field `jwt` as string, body=<{{\"tok\":\"{jwt}\"}}>"
                ),
                "field `jwt` as string",
            ),
            (format!("at the end: {jwt}"), "at the end"),
        ] {
            let out = redact(&text);
            assert!(!out.contains("eyJ") && !out.contains("ya29"), "{out}");
            assert!(out.contains(keeps), "{out}");
            assert!(out.contains("<redacted>"), "{out}");
        }
        let plain = "Pub/Sub pull `projects/p/subscriptions/s`: PERMISSION_DENIED: no.";
        assert_eq!(redact(plain), plain);
        // The exchange's refusal keeps its reason; an opaque subject token answer goes.
        let refused = r#"failed to exchange token, body=<{"error":"invalid_grant"}>"#;
        assert_eq!(redact(refused), refused);
        let opaque =
            r#"failed to read subject token field `jwt` as string, body=<{"t":"opaque-secret"}>"#;
        assert!(!redact(opaque).contains("opaque-secret"));
    }
}
