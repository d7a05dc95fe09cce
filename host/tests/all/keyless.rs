//! Keyless Google credentials (issue 18 item 6): an `external_account` configuration (workload
//! identity federation) read by the worker's own loader (`queue::pubsub::load_credentials`, the
//! function `Pubsub::connect` calls), against local stand-ins of
//!
//! - SaladCloud's instance metadata service, `GET http://169.254.169.254/v1/token`
//!   (`support::imds`: refuses a request without `Metadata: true`, with an `X-Forwarded-*`
//!   header or through a proxy), serving the instance's identity JWT as `{"jwt": "..."}`;
//! - Google's Security Token Service, `POST https://sts.googleapis.com/v1/token`
//!   (`support::sts`: checks the token exchange's form: grant type, requested and subject
//!   token types, audience, scope; records the subject token it was given).
//!
//! The configuration's `token_url` points at the STS stand-in, which the auth library allows,
//! so the whole exchange runs here; what cannot be reached is Google's real STS and its
//! verification of SaladCloud's signature against the provider's keys (docs/saladcloud.md,
//! "Keyless auth", says how to check that part on a real instance).

use crate::support;

use google_cloud_auth::credentials::CacheableResource;
use support::imds::{Imds, JWT};
use support::sts::{ACCESS_TOKEN, Sts};
use taskhost::queue::pubsub::credentials::describe_error;
use taskhost::queue::pubsub::load_credentials;

const AUDIENCE: &str = "//iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/salad/providers/salad";

/// The configuration `gcloud iam workload-identity-pools create-cred-config` writes for
/// SaladCloud (docs/saladcloud.md), with the two URLs pointed at the stand-ins.
fn config(token_source: &str, token_url: &str) -> serde_json::Value {
    serde_json::json!({
        "universe_domain": "googleapis.com",
        "type": "external_account",
        "audience": AUDIENCE,
        "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
        "token_url": token_url,
        "credential_source": {
            "url": token_source,
            "headers": {"Metadata": "true"},
            "format": {"type": "json", "subject_token_field_name": "jwt"}
        }
    })
}

fn write(dir: &tempfile::TempDir, config: &serde_json::Value) -> std::path::PathBuf {
    let path = dir.path().join("credentials.json");
    std::fs::write(&path, config.to_string()).unwrap();
    path
}

/// The library reads the token from `/v1/token` with the documented request, gives exactly
/// that token to STS in a well-formed exchange, and the worker's requests then carry STS's
/// access token.
#[tokio::test]
async fn the_identity_token_is_read_from_imds_and_exchanged() {
    let imds = Imds::start();
    let sts = Sts::start(AUDIENCE, false);
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        &dir,
        &config(&format!("{}/v1/token", imds.url()), &sts.token_url()),
    );
    let credentials = load_credentials(Some(&file)).unwrap();
    let headers = match credentials.headers(http::Extensions::new()).await.unwrap() {
        CacheableResource::New { data, .. } => data,
        CacheableResource::NotModified => panic!("no headers on the first call"),
    };
    assert_eq!(
        headers.get(http::header::AUTHORIZATION).unwrap(),
        &format!("Bearer {ACCESS_TOKEN}")
    );
    assert!(imds.requests() >= 1);
    assert_eq!(imds.violations(), Vec::<String>::new());
    assert_eq!(sts.violations(), Vec::<String>::new());
    assert_eq!(sts.subject_tokens(), [JWT]);
    // Cached: a second request neither asks IMDS nor STS again.
    let before = imds.requests();
    credentials.headers(http::Extensions::new()).await.unwrap();
    assert_eq!(imds.requests(), before);
    assert_eq!(sts.subject_tokens().len(), 1);
}

/// A refused exchange (the provider's attribute condition not met) is an error that says
/// so, and never shows the identity token.
#[tokio::test]
async fn a_refused_exchange_says_why_without_the_token() {
    let imds = Imds::start();
    let sts = Sts::start(AUDIENCE, true);
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        &dir,
        &config(&format!("{}/v1/token", imds.url()), &sts.token_url()),
    );
    let credentials = load_credentials(Some(&file)).unwrap();
    let err = credentials
        .headers(http::Extensions::new())
        .await
        .unwrap_err();
    let said = describe_error(&err);
    assert!(said.contains("GOOGLE_APPLICATION_CREDENTIALS"), "{said}");
    assert!(
        said.contains("invalid_grant") || said.contains("400"),
        "{said}"
    );
    assert!(!said.contains(JWT), "{said}");
    assert_eq!(sts.subject_tokens(), [JWT]);
    assert_eq!(imds.violations(), Vec::<String>::new());
}

/// A token source answering without the configured field: the auth library's error quotes
/// the whole answer (token included); what taskhost reports has it redacted.
#[tokio::test]
async fn a_token_answer_of_another_shape_is_reported_redacted() {
    let secret = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJsZWFrIn0.c2lnbmF0dXJl";
    let source = support::http::serve(move |_| {
        (
            200,
            Some(serde_json::json!({"token": secret, "note": "other shape"})),
        )
    });
    let sts = Sts::start(AUDIENCE, false);
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        &dir,
        &config(&format!("{source}/identity"), &sts.token_url()),
    );
    let err = load_credentials(Some(&file))
        .unwrap()
        .headers(http::Extensions::new())
        .await
        .unwrap_err();
    let said = describe_error(&err);
    assert!(said.contains("jwt"), "{said}");
    assert!(!said.contains(secret), "{said}");
    assert!(sts.subject_tokens().is_empty());
}

/// The loader's own checks: a configuration at `/v1/token` without `Metadata: true` is refused
/// at startup with the fix, naming the file, not its content.
#[test]
fn a_configuration_without_the_metadata_header_is_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(
        "http://169.254.169.254/v1/token",
        "https://sts.googleapis.com/v1/token",
    );
    c["credential_source"]
        .as_object_mut()
        .unwrap()
        .remove("headers");
    let file = write(&dir, &c);
    let err = load_credentials(Some(&file)).unwrap_err().to_string();
    assert!(err.contains("credentials.json"), "{err}");
    assert!(err.contains("Metadata"), "{err}");
    assert!(!err.contains(AUDIENCE), "{err}");
}
