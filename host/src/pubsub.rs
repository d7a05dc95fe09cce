//! Google Cloud Pub/Sub: the production queue backend, on the official `google-cloud-pubsub`
//! crate (googleapis/google-cloud-rust).
//!
//! Three parts:
//! - admin, idempotent: [`Pubsub::ensure_topic`], [`Pubsub::ensure_subscription`],
//!   [`Pubsub::ensure_schema_on_topic`], plus [`Pubsub::validate_message`];
//! - publishing: [`Pubsub::publish`] (batched by the crate, every result awaited);
//! - receiving: [`Pubsub::subscribe`], a streaming pull whose lease on every handed-out message is
//!   extended for as long as its [`LeaseHandle`] is alive (hours if need be), and
//!   [`Pubsub::pull_some`] for short reads (tests, `taskhost status` on the dead-letter
//!   subscription).
//!
//! **Invariant:** only this module knows ack IDs, lease extension and the official crate.
//! **API boundary:** callers see ids (`"jobs"`, not `"projects/p/topics/jobs"`; a full
//! `projects/...` name is accepted too), [`Delivery`] and [`LeaseHandle`].
//!
//! # How the lease is kept for hours
//! The crate's lease loop (a tokio task spawned per [`Subscription`]) sends `ModifyAckDeadline`
//! for every message under lease management. [`Pubsub::subscribe`] configures it so:
//! - `Subscribe::set_max_lease(Duration::MAX)`: the crate stops extending a message after
//!   `max_lease` (default 60 minutes, then the lease lapses and the message is redelivered);
//!   the crate clamps `Duration::MAX` to 100 years. This is the one setting that removes the
//!   60-minute cap.
//! - `Subscribe::set_max_lease_extension(ack_deadline)`: each extension sets the deadline to
//!   `ACK_DEADLINE_SECONDS` from now (the crate clamps to 10..=600 s; we clamp first so the
//!   value we report is the value used). The same value is sent as `stream_ack_deadline_seconds`
//!   when the stream opens, so it also applies before the first extension.
//! - The crate checks every 3 s (`EXTEND_PERIOD`) and extends a message whose last successful
//!   extension is older than `ack_deadline - 5 s` (and a new message at the first check, within
//!   ~0.5-3 s of receipt). A failed extension RPC is retried at the next check. With the default
//!   60 s deadline a message is extended about every 55-58 s; a lease lapses only if the process
//!   stops (SIGKILL, node loss) or cannot reach Pub/Sub for about a whole deadline (then another
//!   worker may get the job: the checkpoint fence settles who owns it).
//! - The lease loop keeps running for handed-out messages even after the [`Subscription`] is
//!   dropped (the crate's `ShutdownBehavior::WaitForProcessing`): a [`LeaseHandle`] alone keeps
//!   its lease. It is a tokio task, so the runtime must keep being polled (the task runtime
//!   yields every ~1 ms for exactly this reason).
//!
//! # Ack, nack and drop
//! - [`LeaseHandle::ack`] queues the ack ID for the lease loop, which sends `Acknowledge` within
//!   ~100 ms. On an at-least-once subscription (ours) the result of that RPC is discarded by the
//!   crate: an ack is best effort and a message may still come back, which the host tolerates
//!   (a job whose result exists is acked without running again). Only on an exactly-once
//!   subscription can an ack be confirmed ([`LeaseHandle::confirmed_ack`]).
//! - [`LeaseHandle::nack`] sends `ModifyAckDeadline(0)`: the message is redelivered at once,
//!   possibly to another worker, and Pub/Sub counts a delivery attempt.
//! - Dropping a [`LeaseHandle`] (or a [`Delivery`]) **nacks** it, exactly like `nack()` (the
//!   crate's `Drop` for its handler). A process that dies sends nothing: the message comes back
//!   when its lease lapses, at most one ack deadline later.
//!
//! # Flow control
//! `max_outstanding_messages` is the worker's slot count. It is sent to the server, which stops
//! sending when that many messages are outstanding (approximately: one response can overshoot),
//! and enforced strictly by [`Subscription::next`] (a semaphore: a slot is held by each
//! [`LeaseHandle`]). A background task moves messages from the crate's stream to an inbox; one
//! that waits there longer than [`SubscribeSettings::hand_back_after`] (30 s) is nacked for
//! another worker. Without that, the crate, which extends the lease of every received message
//! (handed out or not) and here without limit, would let a worker whose slots run hours-long
//! jobs sit on extra messages for hours.
//!
//! # The emulator
//! The crate does not read `PUBSUB_EMULATOR_HOST`; [`PubsubConfig::emulator_host`] maps it to an
//! `http://host:port` endpoint with anonymous credentials. Checked against the official
//! emulator 0.8.20 (`tests/pubsub_emulator.rs`): topics, subscriptions, dead-letter policy,
//! delivery attempts and dead-lettering, schemas, schema-checked publishing, `ValidateMessage`,
//! streaming pull, ack deadlines and their extension all work. Its gaps:
//! - it ignores the stream's flow control and sends every message to the first stream that
//!   asks: the inbox hand-back above is what spreads work over several workers there (each
//!   hand-back counts a delivery attempt);
//! - `GetSchema` never answers: the crate's admin clients speak REST (the publisher and the
//!   subscriber speak gRPC) and always send `view` as an integer query parameter, which the
//!   emulator's REST gateway cannot map (same for `ListSchemas`). An existing schema is
//!   therefore recognized with `ValidateMessage`;
//! - it does not handle a client closing a stream (`NoSuchMethodError` on RST_STREAM in its
//!   log): a message nacked as or after its stream closes comes back only when its ack
//!   deadline has lapsed, once or twice (10-20 s with a 10 s deadline), not at once; new
//!   messages are not affected (see [`Subscription::shutdown`]).
//!
//! A call a server does not implement fails with [`PubsubError::is_unimplemented`] and says so.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use google_cloud_auth::credentials::{self as gcp_credentials, Credentials};
use google_cloud_gax::client_builder::ClientBuilder;
use google_cloud_gax::error::rpc::Code;
use google_cloud_gax::retry_policy::{Aip194Strict, RetryPolicyExt};
use google_cloud_pubsub::client::{
    BasePublisher, SchemaService, Subscriber, SubscriptionAdmin, TopicAdmin,
};
use google_cloud_pubsub::model;
use google_cloud_pubsub::retry_policy::RetryableErrors;
use google_cloud_pubsub::subscriber::handler::Handler;
use google_cloud_pubsub::subscriber::{MessageStream, ShutdownBehavior, ShutdownToken};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// Default ack deadline (`ACK_DEADLINE_SECONDS`), as in the guide's worker: 60 s.
pub const DEFAULT_ACK_DEADLINE_SECS: u32 = 60;
/// Smallest ack deadline Pub/Sub (and the crate's lease extension) accepts: 10 s.
pub const MIN_ACK_DEADLINE_SECS: u32 = 10;
/// Largest ack deadline Pub/Sub (and the crate's lease extension) accepts: 600 s.
pub const MAX_ACK_DEADLINE_SECS: u32 = 600;
/// Default `maxDeliveryAttempts` of the dead-letter policy: 100, the largest Pub/Sub allows.
/// Every lapsed lease counts as an attempt, so the host counts real failures itself.
pub const DEFAULT_MAX_DELIVERY_ATTEMPTS: u32 = 100;
/// Default retention of unacked messages on a subscription: 7 days (the Pub/Sub maximum is 31).
pub const DEFAULT_MESSAGE_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// Default [`SubscribeSettings::hand_back_after`]: 30 s.
pub const DEFAULT_HAND_BACK_AFTER: Duration = Duration::from_secs(30);
/// Default time limit of one admin or publish call, retries included: 60 s.
pub const DEFAULT_RPC_TIMEOUT: Duration = Duration::from_secs(60);
/// The guide's Avro schema for the job message (`{job_id, steps}`), used with JSON encoding.
pub const JOB_SCHEMA_AVRO: &str = r#"{"type":"record","name":"Job","fields":[{"name":"job_id","type":"string"},{"name":"steps","type":"int"}]}"#;

/// A job message the guide's schema accepts, and one it refuses (`steps` is not an int): how
/// [`Pubsub::ensure_schema_on_topic`] recognizes an existing schema.
const JOB_SAMPLE_VALID: &str = r#"{"job_id":"sample-1","steps":1}"#;
const JOB_SAMPLE_INVALID: &str = r#"{"job_id":"sample-1","steps":"one"}"#;

const PRODUCTION_ENDPOINT: &str = "https://pubsub.googleapis.com";

/// Where and how to reach Pub/Sub.
#[derive(Clone, Debug)]
pub struct PubsubConfig {
    /// `PROJECT_ID`.
    pub project_id: String,
    /// `PUBSUB_EMULATOR_HOST` (`host:port`). When set, the emulator is used at
    /// `http://host:port` with anonymous credentials, and `credentials_file` is ignored.
    pub emulator_host: Option<String>,
    /// `GOOGLE_APPLICATION_CREDENTIALS`: a service-account key (or authorized-user) JSON file.
    /// `None`: Application Default Credentials (the well-known gcloud file, then the metadata
    /// server).
    pub credentials_file: Option<PathBuf>,
    /// Time limit of one admin or publish call, retries of transient errors included
    /// ([`DEFAULT_RPC_TIMEOUT`]). It also bounds the existence check in [`Pubsub::subscribe`];
    /// the streaming pull itself reconnects forever (see [`Subscription::next`]).
    pub rpc_timeout: Duration,
}

impl PubsubConfig {
    /// A configuration for `project_id` on production Pub/Sub with Application Default
    /// Credentials and [`DEFAULT_RPC_TIMEOUT`].
    pub fn new(project_id: impl Into<String>) -> Self {
        Self {
            project_id: project_id.into(),
            emulator_host: None,
            credentials_file: None,
            rpc_timeout: DEFAULT_RPC_TIMEOUT,
        }
    }
}

/// What an `ensure_*` call did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ensured {
    /// The resource did not exist and was created.
    Created,
    /// The resource already existed; it was not changed.
    Found,
}

/// Settings of a subscription created by [`Pubsub::ensure_subscription`].
#[derive(Clone, Debug)]
pub struct SubscriptionSettings {
    /// The subscription's ack deadline (10..=600 s), for pulls that set none of their own
    /// ([`Pubsub::subscribe`] sets `ACK_DEADLINE_SECONDS` on its stream).
    pub ack_deadline_secs: u32,
    /// The dead-letter topic (it must exist). `None`: no dead-letter policy, and then Pub/Sub
    /// reports no delivery attempt count either.
    pub dead_letter_topic_id: Option<String>,
    /// Deliveries before a message goes to the dead-letter topic (5..=100).
    pub max_delivery_attempts: u32,
    /// How long unacked messages are kept (10 minutes..=31 days).
    pub message_retention: Duration,
}

impl Default for SubscriptionSettings {
    fn default() -> Self {
        Self {
            ack_deadline_secs: DEFAULT_ACK_DEADLINE_SECS,
            dead_letter_topic_id: None,
            max_delivery_attempts: DEFAULT_MAX_DELIVERY_ATTEMPTS,
            message_retention: DEFAULT_MESSAGE_RETENTION,
        }
    }
}

/// The result of [`Pubsub::ensure_schema_on_topic`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SchemaOnTopic {
    /// What happened to the schema.
    pub schema: Ensured,
    /// What happened to the topic.
    pub topic: TopicSchema,
}

/// The state of a topic with respect to a schema.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TopicSchema {
    /// The topic was created with the schema and JSON encoding.
    Created,
    /// The topic already existed with the schema and JSON encoding.
    Found,
    /// The topic already existed without any schema; it was left unchanged, so messages are
    /// not checked against the schema.
    ExistsWithoutSchema,
    /// The topic already existed with another schema or encoding; it was left unchanged.
    ExistsWithOtherSchema {
        /// The topic's schema name (`_deleted-schema_` if its schema was deleted).
        schema: String,
        /// The topic's encoding (`JSON`, `BINARY`, ...).
        encoding: String,
    },
}

/// The verdict of [`Pubsub::validate_message`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MessageValidity {
    /// The message conforms to the schema.
    Valid,
    /// The message does not conform; the server's reason.
    Invalid(String),
}

/// A message to publish.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OutgoingMessage {
    /// The payload (the job's JSON document).
    pub data: Vec<u8>,
    /// Attributes (for example `module`).
    pub attributes: BTreeMap<String, String>,
}

/// A received message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IncomingMessage {
    /// The server-assigned message id (the same on every redelivery).
    pub message_id: String,
    /// The payload.
    pub data: Vec<u8>,
    /// The attributes.
    pub attributes: BTreeMap<String, String>,
    /// 1 for the first delivery, n for the n-th; `None` when the subscription has no
    /// dead-letter policy (Pub/Sub counts attempts only when it has one).
    pub delivery_attempt: Option<u32>,
}

/// A message handed out by a [`Subscription`], with the lease on it.
#[derive(Debug)]
pub struct Delivery {
    /// The message.
    pub message: IncomingMessage,
    /// The lease: kept and extended while this lives; ack, nack, or drop (= nack) it.
    pub handle: LeaseHandle,
}

/// How a [`LeaseHandle::confirmed_ack`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckConfirmation {
    /// Exactly-once subscription: the server confirmed; the message will not come back.
    Confirmed,
    /// At-least-once subscription: the ack was sent best effort; no confirmation exists.
    BestEffort,
}

/// The lease on one handed-out message, and one of the subscription's
/// `max_outstanding_messages` slots.
///
/// While it is alive the message's ack deadline is extended, without limit. `ack`, `nack` or
/// dropping it ends the lease and frees the slot; dropping it nacks the message (the crate's
/// behaviour), so a panicking or cancelled job hands its message back at once.
#[derive(Debug)]
pub struct LeaseHandle {
    handler: Handler,
    _slot: OwnedSemaphorePermit,
}

impl LeaseHandle {
    /// Acknowledges the message: the job is done and must not run again. Best effort on an
    /// at-least-once subscription (the crate sends it within ~100 ms and discards the RPC's
    /// result); see [`LeaseHandle::confirmed_ack`].
    pub fn ack(self) {
        self.handler.ack();
    }

    /// Hands the message back now (`ModifyAckDeadline(0)`): Pub/Sub redelivers it, possibly to
    /// another worker, and counts a delivery attempt.
    pub fn nack(self) {
        self.handler.nack();
    }

    /// Acknowledges and, on an exactly-once subscription, waits for the server's confirmation.
    ///
    /// `Ok(Confirmed)`: the message will not be redelivered. `Ok(BestEffort)`: at-least-once
    /// subscription, the ack was queued as by [`LeaseHandle::ack`] and cannot be confirmed.
    /// `Err`: the confirmation failed (for example the lease had expired); the message may come
    /// back.
    pub async fn confirmed_ack(self) -> Result<AckConfirmation, PubsubError> {
        match self.handler {
            Handler::ExactlyOnce(h) => match h.confirmed_ack().await {
                Ok(()) => Ok(AckConfirmation::Confirmed),
                Err(e) => Err(PubsubError::new("confirm ack", "", e.to_string()).with_source(e)),
            },
            other => {
                other.ack();
                Ok(AckConfirmation::BestEffort)
            }
        }
    }
}

/// Flow control and lease settings of a [`Subscription`].
#[derive(Clone, Copy, Debug)]
pub struct SubscribeSettings {
    /// The most messages handed out and not yet acked or nacked: the worker's slot count.
    /// Sent to the server as the stream's flow control and enforced strictly by
    /// [`Subscription::next`]. At least 1.
    pub max_outstanding_messages: usize,
    /// `ACK_DEADLINE_SECONDS`: each lease extension moves the deadline this far ahead, so a
    /// dead worker's message comes back at most this long after its last extension.
    /// Clamped to [`MIN_ACK_DEADLINE_SECS`]..=[`MAX_ACK_DEADLINE_SECS`].
    pub ack_deadline_secs: u32,
    /// How long a message received while every slot is busy waits for one before it is
    /// handed back (nacked) for another worker ([`DEFAULT_HAND_BACK_AFTER`]).
    ///
    /// Server-side flow control is approximate (a batch can overshoot it; the emulator ignores
    /// it altogether), and the crate extends the lease of every received message, handed out
    /// or not, without limit here: without this, a worker whose slots run hour-long jobs
    /// would sit on extra messages for hours while other workers idle. Each hand-back counts
    /// a delivery attempt.
    pub hand_back_after: Duration,
}

impl Default for SubscribeSettings {
    fn default() -> Self {
        Self {
            max_outstanding_messages: 1,
            ack_deadline_secs: DEFAULT_ACK_DEADLINE_SECS,
            hand_back_after: DEFAULT_HAND_BACK_AFTER,
        }
    }
}

/// What [`Pubsub::pull_some`] does with each message it read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settle {
    /// Acknowledge: the message is consumed.
    Ack,
    /// Nack: the message stays in the subscription, with one more delivery attempt counted.
    /// Pub/Sub offers it again at once; the emulator only after 10-20 s (see
    /// [`Subscription::shutdown`]).
    Nack,
}

/// A connection to Pub/Sub (or the emulator): the admin clients, a publisher and a subscriber
/// sharing one set of credentials. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Pubsub {
    project_id: String,
    endpoint: String,
    rpc_timeout: Duration,
    topics: TopicAdmin,
    subscriptions: SubscriptionAdmin,
    schemas: SchemaService,
    publisher: BasePublisher,
    subscriber: Subscriber,
}

impl Pubsub {
    /// Builds the clients. Connections are opened lazily: this does not contact the server, so
    /// an unreachable server shows up at the first call (bounded by `rpc_timeout`).
    ///
    /// Errors: an empty project id, a malformed emulator host, or a credentials file that cannot
    /// be read or is not a service-account / authorized-user key (the error names the file,
    /// never its content).
    pub async fn connect(config: &PubsubConfig) -> Result<Self, PubsubError> {
        if config.project_id.is_empty() {
            return Err(PubsubError::new(
                "connect",
                "",
                "PROJECT_ID is empty".to_string(),
            ));
        }
        let (endpoint, credentials) = match &config.emulator_host {
            Some(host) => (
                Some(emulator_endpoint(host)?),
                gcp_credentials::anonymous::Builder::new().build(),
            ),
            None => (None, load_credentials(config.credentials_file.as_deref())?),
        };
        let shown_endpoint = endpoint
            .clone()
            .unwrap_or_else(|| PRODUCTION_ENDPOINT.to_string());
        let build_error = |client: &'static str| {
            let endpoint = shown_endpoint.clone();
            move |e: google_cloud_gax::client_builder::Error| {
                PubsubError::new("build client", endpoint, format!("{client}: {e}")).with_source(e)
            }
        };

        let admin = AdminSettings {
            endpoint: endpoint.clone(),
            credentials: credentials.clone(),
            rpc_timeout: config.rpc_timeout,
        };
        let topics = admin
            .apply(TopicAdmin::builder())
            .build()
            .await
            .map_err(build_error("topic admin"))?;
        let subscriptions = admin
            .apply(SubscriptionAdmin::builder())
            .build()
            .await
            .map_err(build_error("subscription admin"))?;
        let schemas = admin
            .apply(SchemaService::builder())
            .build()
            .await
            .map_err(build_error("schema service"))?;

        // The publisher retries what the service documents as retryable, for `rpc_timeout`
        // (the crate's default is 10 minutes).
        let mut publisher = BasePublisher::builder()
            .with_credentials(credentials.clone())
            .with_retry_policy(RetryableErrors.with_time_limit(config.rpc_timeout));
        if let Some(e) = &endpoint {
            publisher = publisher.with_endpoint(e.clone());
        }
        let publisher = publisher.build().await.map_err(build_error("publisher"))?;

        let subscriber = new_subscriber(&credentials, endpoint.as_deref())
            .await
            .map_err(build_error("subscriber"))?;

        Ok(Self {
            project_id: config.project_id.clone(),
            endpoint: shown_endpoint,
            rpc_timeout: config.rpc_timeout,
            topics,
            subscriptions,
            schemas,
            publisher,
            subscriber,
        })
    }

    /// The endpoint in use (`http://host:port` for the emulator).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// `projects/<project>/topics/<id>`, or `id` itself if it is already a full name.
    pub fn topic_path(&self, topic_id: &str) -> String {
        self.path("topics", topic_id)
    }

    /// `projects/<project>/subscriptions/<id>`, or `id` itself if it is already a full name.
    pub fn subscription_path(&self, sub_id: &str) -> String {
        self.path("subscriptions", sub_id)
    }

    /// `projects/<project>/schemas/<id>`, or `id` itself if it is already a full name.
    pub fn schema_path(&self, schema_id: &str) -> String {
        self.path("schemas", schema_id)
    }

    fn path(&self, kind: &str, id: &str) -> String {
        if id.starts_with("projects/") {
            id.to_string()
        } else {
            format!("projects/{}/{kind}/{id}", self.project_id)
        }
    }

    /// Creates the topic unless it exists.
    pub async fn ensure_topic(&self, topic_id: &str) -> Result<Ensured, PubsubError> {
        let name = self.topic_path(topic_id);
        match self.topics.create_topic().set_name(&name).send().await {
            Ok(_) => {
                tracing::info!(topic = %name, "created topic");
                Ok(Ensured::Created)
            }
            Err(e) if code(&e) == Some(Code::AlreadyExists) => Ok(Ensured::Found),
            // Without the right to create, the topic may still exist: say so if it does.
            Err(e) if code(&e) == Some(Code::PermissionDenied) => {
                match self.topics.get_topic().set_topic(&name).send().await {
                    Ok(_) => Ok(Ensured::Found),
                    Err(_) => Err(self.rpc_error("create topic", &name, e)),
                }
            }
            Err(e) => Err(self.rpc_error("create topic", &name, e)),
        }
    }

    /// Creates the subscription on `topic_id` with `settings` unless it exists.
    ///
    /// The subscription never expires for inactivity (an empty expiration policy; Pub/Sub's
    /// default deletes it after 31 idle days). The topic and the dead-letter topic must exist.
    /// An existing subscription is left unchanged: attached to another topic it is an error;
    /// other differing settings are logged as warnings.
    pub async fn ensure_subscription(
        &self,
        sub_id: &str,
        topic_id: &str,
        settings: &SubscriptionSettings,
    ) -> Result<Ensured, PubsubError> {
        let name = self.subscription_path(sub_id);
        let topic = self.topic_path(topic_id);
        let attempts = &settings.max_delivery_attempts;
        if settings.dead_letter_topic_id.is_some() && !(5..=100).contains(attempts) {
            return Err(PubsubError::new(
                "create subscription",
                name,
                format!("max_delivery_attempts must be in 5..=100, not {attempts}"),
            ));
        }
        let dead_letter = settings.dead_letter_topic_id.as_deref().map(|dlt| {
            model::DeadLetterPolicy::new()
                .set_dead_letter_topic(self.topic_path(dlt))
                .set_max_delivery_attempts(*attempts as i32)
        });
        let retention = google_cloud_wkt::Duration::clamp(
            settings.message_retention.as_secs().min(i64::MAX as u64) as i64,
            0,
        );
        let created = self
            .subscriptions
            .create_subscription()
            .set_name(&name)
            .set_topic(&topic)
            .set_ack_deadline_seconds(settings.ack_deadline_secs as i32)
            .set_message_retention_duration(retention)
            .set_expiration_policy(model::ExpirationPolicy::new())
            .set_or_clear_dead_letter_policy(dead_letter.clone())
            .send()
            .await;
        let error = match created {
            Ok(_) => {
                tracing::info!(subscription = %name, topic = %topic, "created subscription");
                return Ok(Ensured::Created);
            }
            Err(e) => e,
        };
        let code = code(&error);
        if code != Some(Code::AlreadyExists) && code != Some(Code::PermissionDenied) {
            return Err(self.rpc_error("create subscription", &name, error));
        }
        let existing = match self
            .subscriptions
            .get_subscription()
            .set_subscription(&name)
            .send()
            .await
        {
            Ok(s) => s,
            Err(_) if code == Some(Code::PermissionDenied) => {
                return Err(self.rpc_error("create subscription", &name, error));
            }
            Err(e) => return Err(self.rpc_error("get subscription", &name, e)),
        };
        if existing.topic != topic {
            return Err(PubsubError::new(
                "ensure subscription",
                name,
                format!(
                    "exists on topic `{}`, not on `{topic}`; delete it or use another SUBSCRIPTION_ID",
                    existing.topic
                ),
            ));
        }
        if existing.ack_deadline_seconds != settings.ack_deadline_secs as i32 {
            tracing::warn!(
                subscription = %name,
                existing = existing.ack_deadline_seconds,
                wanted = settings.ack_deadline_secs,
                "existing subscription has another ack deadline; left unchanged"
            );
        }
        if existing.dead_letter_policy != dead_letter {
            tracing::warn!(
                subscription = %name,
                existing = ?existing.dead_letter_policy,
                wanted = ?dead_letter,
                "existing subscription has another dead-letter policy; left unchanged"
            );
        }
        Ok(Ensured::Found)
    }

    /// Creates the Avro schema [`JOB_SCHEMA_AVRO`] as `schema_id` unless it exists, then the
    /// topic with that schema and JSON encoding unless it exists.
    ///
    /// An existing schema is recognized by behaviour (it accepts a sample job and refuses a job
    /// whose `steps` is not an int); otherwise it is an error. An existing topic is never
    /// changed; its state is reported ([`TopicSchema`]): without a schema, messages published to
    /// it are not checked.
    pub async fn ensure_schema_on_topic(
        &self,
        topic_id: &str,
        schema_id: &str,
    ) -> Result<SchemaOnTopic, PubsubError> {
        let schema_name = self.schema_path(schema_id);
        let schema = self.ensure_job_schema(schema_id, &schema_name).await?;

        let topic_name = self.topic_path(topic_id);
        let settings = model::SchemaSettings::new()
            .set_schema(&schema_name)
            .set_encoding(model::Encoding::Json);
        let created = self
            .topics
            .create_topic()
            .set_name(&topic_name)
            .set_schema_settings(settings)
            .send()
            .await;
        let topic = match created {
            Ok(_) => {
                tracing::info!(topic = %topic_name, schema = %schema_name, "created topic with schema");
                TopicSchema::Created
            }
            Err(e) if code(&e) == Some(Code::AlreadyExists) => {
                let existing = self
                    .topics
                    .get_topic()
                    .set_topic(&topic_name)
                    .send()
                    .await
                    .map_err(|e| self.rpc_error("get topic", &topic_name, e))?;
                match existing.schema_settings {
                    None => TopicSchema::ExistsWithoutSchema,
                    Some(s) if s.schema.is_empty() => TopicSchema::ExistsWithoutSchema,
                    Some(s) if s.schema == schema_name && s.encoding == model::Encoding::Json => {
                        TopicSchema::Found
                    }
                    Some(s) => TopicSchema::ExistsWithOtherSchema {
                        schema: s.schema,
                        encoding: s.encoding.name().unwrap_or("UNKNOWN").to_string(),
                    },
                }
            }
            Err(e) => return Err(self.rpc_error("create topic", &topic_name, e)),
        };
        Ok(SchemaOnTopic { schema, topic })
    }

    async fn ensure_job_schema(
        &self,
        schema_id: &str,
        schema_name: &str,
    ) -> Result<Ensured, PubsubError> {
        let definition = model::Schema::new()
            .set_type(model::schema::Type::Avro)
            .set_definition(JOB_SCHEMA_AVRO);
        let created = self
            .schemas
            .create_schema()
            .set_parent(format!("projects/{}", self.project_id))
            .set_schema_id(schema_id)
            .set_schema(definition)
            .send()
            .await;
        match created {
            Ok(_) => {
                tracing::info!(schema = %schema_name, "created schema");
                Ok(Ensured::Created)
            }
            // The existing schema is checked by behaviour, not by reading it back: GetSchema
            // never answers on the emulator (its REST gateway fails on the integer enum query
            // parameter `view=N` the crate always sends: "Unmapped enum value" in its log).
            Err(e) if code(&e) == Some(Code::AlreadyExists) => {
                let accepts = self
                    .validate_message(schema_id, JOB_SAMPLE_VALID.as_bytes())
                    .await?;
                let refuses = self
                    .validate_message(schema_id, JOB_SAMPLE_INVALID.as_bytes())
                    .await?;
                match (accepts, refuses) {
                    (MessageValidity::Valid, MessageValidity::Invalid(_)) => Ok(Ensured::Found),
                    (accepts, refuses) => Err(PubsubError::new(
                        "ensure schema",
                        schema_name,
                        format!(
                            "exists with another definition: {JOB_SAMPLE_VALID} is {accepts:?}, \
                             {JOB_SAMPLE_INVALID} is {refuses:?}"
                        ),
                    )),
                }
            }
            Err(e) => Err(self.rpc_error("create schema", schema_name, e)),
        }
    }

    /// Checks `data` (JSON encoding) against the schema `schema_id` with the `ValidateMessage`
    /// RPC, without publishing it. `Err` only when the check itself failed (schema missing,
    /// server unreachable...).
    pub async fn validate_message(
        &self,
        schema_id: &str,
        data: &[u8],
    ) -> Result<MessageValidity, PubsubError> {
        let schema_name = self.schema_path(schema_id);
        let checked = self
            .schemas
            .validate_message()
            .set_parent(format!("projects/{}", self.project_id))
            .set_name(&schema_name)
            .set_encoding(model::Encoding::Json)
            .set_message(data.to_vec())
            .send()
            .await;
        match checked {
            Ok(_) => Ok(MessageValidity::Valid),
            Err(e) if code(&e) == Some(Code::InvalidArgument) => Ok(MessageValidity::Invalid(
                e.status().map(|s| s.message.clone()).unwrap_or_default(),
            )),
            Err(e) => Err(self.rpc_error("validate message", &schema_name, e)),
        }
    }

    /// Publishes `messages` to `topic_id` and returns their message ids, in order.
    ///
    /// The crate batches them (up to 100 messages / 1 MB / 10 ms per batch, batches sent
    /// concurrently) and retries retryable errors for `rpc_timeout`. Every result is awaited.
    /// If any message fails the error says how many of them were published
    /// ([`PubsubError::published`]): which ones is not reported, so a retry republishes all,
    /// and the host's idempotence by `job_id` absorbs the duplicates.
    pub async fn publish(
        &self,
        topic_id: &str,
        messages: Vec<OutgoingMessage>,
    ) -> Result<Vec<String>, PubsubError> {
        let topic = self.topic_path(topic_id);
        let total = messages.len();
        if total == 0 {
            return Ok(Vec::new());
        }
        let publisher = self.publisher.publisher(&topic).build();
        let pending: Vec<_> = messages
            .into_iter()
            .map(|m| {
                publisher.publish(
                    model::Message::new()
                        .set_data(m.data)
                        .set_attributes(m.attributes),
                )
            })
            .collect();
        let mut ids = Vec::with_capacity(total);
        let mut first_error = None;
        for result in pending {
            match result.await {
                Ok(id) => ids.push(id),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        let Some(error) = first_error else {
            return Ok(ids);
        };
        let published = ids.len();
        let mut err = match &error {
            google_cloud_pubsub::error::PublishError::Rpc(rpc) => {
                self.describe_rpc_error("publish", &topic, rpc)
            }
            other => PubsubError::new("publish", topic.clone(), other.to_string()),
        };
        err.detail = format!("{published} of {total} messages published; {}", err.detail);
        err.published = Some(published);
        Err(err.with_source(error))
    }

    /// Opens a streaming pull on `sub_id` (see the module docs for the lease settings).
    ///
    /// First checks that the subscription exists (bounded by `rpc_timeout`), so a wrong name or
    /// an unreachable server is a clear error here rather than a silent reconnect loop (a
    /// `PERMISSION_DENIED` answer is let through: the Subscriber role cannot `get`).
    pub async fn subscribe(
        &self,
        sub_id: &str,
        settings: &SubscribeSettings,
    ) -> Result<Subscription, PubsubError> {
        let name = self.subscription_path(sub_id);
        match self
            .subscriptions
            .get_subscription()
            .set_subscription(&name)
            .send()
            .await
        {
            Ok(_) => {}
            // The Pub/Sub Subscriber role may consume but not get a subscription: let the
            // stream itself report a real permission problem.
            Err(e) if code(&e) == Some(Code::PermissionDenied) => {}
            Err(e) => return Err(self.rpc_error("get subscription", &name, e)),
        }

        let slots = settings.max_outstanding_messages.max(1);
        let ack_deadline_secs = settings
            .ack_deadline_secs
            .clamp(MIN_ACK_DEADLINE_SECS, MAX_ACK_DEADLINE_SECS);
        let stream = self
            .subscriber
            .subscribe(&name)
            .set_max_outstanding_messages(slots as i64)
            .set_max_lease_extension(Duration::from_secs(ack_deadline_secs.into()))
            // No cap on how long a job holds its message (the crate's default is 60 minutes;
            // it clamps Duration::MAX to 100 years).
            .set_max_lease(Duration::MAX)
            .set_shutdown_behavior(ShutdownBehavior::WaitForProcessing)
            .build();
        let shutdown = stream.shutdown_token();
        let inbox = Arc::new(Inbox::default());
        let pump = tokio::spawn(pump(
            stream,
            Arc::clone(&inbox),
            self.clone(),
            name.clone(),
            settings.hand_back_after,
        ));
        Ok(Subscription {
            name,
            ack_deadline_secs,
            slots: Arc::new(Semaphore::new(slots)),
            inbox,
            pump,
            shutdown,
        })
    }

    /// Reads up to `max` messages from `sub_id` for at most `wait`, settles each one as told,
    /// and returns them. For short reads (tests, `taskhost status` on the dead-letter
    /// subscription), not for running jobs. Fewer than `max` (maybe none) when `wait` elapses.
    pub async fn pull_some(
        &self,
        sub_id: &str,
        max: usize,
        wait: Duration,
        settle: Settle,
    ) -> Result<Vec<IncomingMessage>, PubsubError> {
        let deadline = tokio::time::Instant::now() + wait;
        // The shortest deadline: a message whose settlement is lost (see `Settle::Nack`) is
        // back within 10 s.
        let settings = SubscribeSettings {
            max_outstanding_messages: max.max(1),
            ack_deadline_secs: MIN_ACK_DEADLINE_SECS,
            ..SubscribeSettings::default()
        };
        let mut subscription = self.subscribe(sub_id, &settings).await?;
        let mut messages = Vec::new();
        // Nacked only at the end: a message nacked at once could come straight back and be
        // read twice.
        let mut to_nack = Vec::new();
        while messages.len() < max {
            let Ok(next) = tokio::time::timeout_at(deadline, subscription.next()).await else {
                break;
            };
            let Some(Delivery { message, handle }) = next? else {
                break;
            };
            match settle {
                Settle::Ack => handle.ack(),
                Settle::Nack => to_nack.push(handle),
            }
            messages.push(message);
        }
        // Stop pulling before nacking (see `Subscription::shutdown`), then flush the acks and
        // nacks.
        let flushed = subscription.shutdown_token();
        drop(subscription);
        to_nack.into_iter().for_each(LeaseHandle::nack);
        if tokio::time::timeout(self.rpc_timeout, flushed.shutdown())
            .await
            .is_err()
        {
            tracing::warn!(subscription = %sub_id, "pull_some: acks not flushed in time");
        }
        Ok(messages)
    }

    fn rpc_error(
        &self,
        operation: &'static str,
        resource: &str,
        error: google_cloud_pubsub::Error,
    ) -> PubsubError {
        self.describe_rpc_error(operation, resource, &error)
            .with_source(error)
    }

    /// The error's summary; the caller attaches the source.
    fn describe_rpc_error(
        &self,
        operation: &'static str,
        resource: &str,
        error: &google_cloud_pubsub::Error,
    ) -> PubsubError {
        let (detail, transient) = match error.status() {
            Some(s) if s.code == Code::Unimplemented => (
                format!(
                    "not supported by the server at {} (UNIMPLEMENTED: {})",
                    self.endpoint, s.message
                ),
                false,
            ),
            Some(s) => (
                format!("{}: {}", s.code.name(), s.message),
                matches!(
                    s.code,
                    Code::Unavailable
                        | Code::DeadlineExceeded
                        | Code::ResourceExhausted
                        | Code::Aborted
                        | Code::Internal
                ),
            ),
            None if error.is_authentication() => (
                "could not obtain credentials (check GOOGLE_APPLICATION_CREDENTIALS)".to_string(),
                true,
            ),
            None => (
                format!(
                    "no answer from {} (is the server running and reachable?)",
                    self.endpoint
                ),
                true,
            ),
        };
        let mut err = PubsubError::new(operation, resource, detail);
        err.code = error.status().map(|s| s.code);
        err.transient = transient;
        err
    }
}

/// An open streaming pull: hands out at most `max_outstanding_messages` [`Delivery`]s at a time.
///
/// A background task reads the crate's stream into an inbox, from which [`Subscription::next`]
/// hands messages out as slots free up, and hands back those that waited longer than
/// `hand_back_after`. Dropping the subscription stops pulling and nacks the inbox; the leases
/// of messages already handed out stay alive (and extended) until their handles are acked,
/// nacked or dropped.
#[derive(Debug)]
pub struct Subscription {
    name: String,
    ack_deadline_secs: u32,
    slots: Arc<Semaphore>,
    inbox: Arc<Inbox>,
    pump: tokio::task::JoinHandle<()>,
    shutdown: ShutdownToken,
}

impl Subscription {
    /// The subscription's full name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The ack deadline each lease extension sets, after clamping.
    pub fn ack_deadline(&self) -> Duration {
        Duration::from_secs(self.ack_deadline_secs.into())
    }

    /// Waits for a free slot, then for the next message.
    ///
    /// `Ok(None)`: the stream was shut down. `Err`: a permanent error (subscription deleted,
    /// permission denied...), returned once; the stream is closed after it. Transient errors
    /// (server unavailable, connection reset) are not returned: the crate reconnects with
    /// backoff (up to 60 s between attempts) for as long as it takes, while leases keep being
    /// extended. Cancel-safe: a message is never lost by dropping this future.
    pub async fn next(&mut self) -> Result<Option<Delivery>, PubsubError> {
        let slot = Arc::clone(&self.slots)
            .acquire_owned()
            .await
            .expect("the slot semaphore is never closed");
        loop {
            // `notify_one` stores a permit when nobody waits, so no wake-up is lost between
            // this check and the `notified().await` below.
            if let Some(next) = self.inbox.take() {
                return next.map(|waiting| {
                    waiting.map(
                        |Waiting {
                             message, handler, ..
                         }| Delivery {
                            message: IncomingMessage {
                                message_id: message.message_id,
                                data: message.data.to_vec(),
                                attributes: message.attributes.into_iter().collect(),
                                delivery_attempt: handler
                                    .delivery_attempt()
                                    .and_then(|n| u32::try_from(n).ok()),
                            },
                            handle: LeaseHandle {
                                handler,
                                _slot: slot,
                            },
                        },
                    )
                });
            }
            self.inbox.arrived.notified().await;
        }
    }

    /// Stops pulling, nacks the messages not handed out, then waits until every handed-out
    /// message is acked, nacked or dropped and the pending ack/nack RPCs are done. Call it
    /// before exiting so acks are not lost; it waits as long as any handle lives.
    ///
    /// To hand jobs back on exit (SIGTERM), stop pulling *first* (this call, or dropping the
    /// subscription), then nack: a message nacked while its stream is still open can be sent
    /// straight back to that stream as it closes. Emulator gap: it does not handle a client
    /// closing a stream (`NoSuchMethodError` on RST_STREAM in its log), and a message nacked as
    /// or after its stream closes (including the inbox's) comes back only once its ack deadline
    /// has lapsed, sometimes twice, instead of at once.
    pub async fn shutdown(self) {
        let token = self.shutdown_token();
        drop(self);
        token.shutdown().await;
    }

    fn shutdown_token(&self) -> ShutdownToken {
        self.shutdown.clone()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        // Dropping the task drops the crate's stream (which signals its shutdown) and the
        // task's share of the inbox; the inbox's handlers nack their messages when it goes.
        self.pump.abort();
    }
}

/// Messages received and not handed out yet, oldest first.
#[derive(Debug, Default)]
struct Inbox {
    state: std::sync::Mutex<InboxState>,
    /// One permit per message pushed (or end), for the single consumer.
    arrived: Notify,
}

#[derive(Debug, Default)]
struct InboxState {
    waiting: VecDeque<Waiting>,
    /// How the stream ended: `Some(Err)` is returned by `next()` once, then `Some(Ok)`.
    end: Option<Result<(), PubsubError>>,
}

#[derive(Debug)]
struct Waiting {
    since: tokio::time::Instant,
    message: model::Message,
    handler: Handler,
}

impl Inbox {
    fn lock(&self) -> std::sync::MutexGuard<'_, InboxState> {
        // The state stays consistent even if a holder panicked: every update is one call.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&self, message: model::Message, handler: Handler) {
        let since = tokio::time::Instant::now();
        self.lock().waiting.push_back(Waiting {
            since,
            message,
            handler,
        });
        self.arrived.notify_one();
    }

    /// The oldest waiting message; else how the stream ended (`Ok(None)` once ended cleanly);
    /// `None` while the stream is open and nothing waits.
    fn take(&self) -> Option<Result<Option<Waiting>, PubsubError>> {
        let mut state = self.lock();
        if let Some(waiting) = state.waiting.pop_front() {
            return Some(Ok(Some(waiting)));
        }
        state
            .end
            .as_mut()
            .map(|end| std::mem::replace(end, Ok(())).map(|()| None))
    }

    /// Nacks the messages that have waited `max_wait` or longer.
    fn hand_back_older_than(&self, max_wait: Duration, subscription: &str) {
        let now = tokio::time::Instant::now();
        let mut stale = Vec::new();
        {
            let mut state = self.lock();
            while state
                .waiting
                .front()
                .is_some_and(|w| now.duration_since(w.since) >= max_wait)
            {
                stale.extend(state.waiting.pop_front());
            }
        }
        if !stale.is_empty() {
            tracing::debug!(
                subscription,
                count = stale.len(),
                "handing back messages that waited {max_wait:?} for a free slot"
            );
        }
        for waiting in stale {
            waiting.handler.nack();
        }
    }

    /// Records how the stream ended; nacks whatever still waits.
    fn close(&self, end: Result<(), PubsubError>) {
        let stale = {
            let mut state = self.lock();
            state.end = Some(end);
            std::mem::take(&mut state.waiting)
        };
        self.arrived.notify_one();
        for waiting in stale {
            waiting.handler.nack();
        }
    }
}

/// How often the inbox is checked for messages to hand back.
const HAND_BACK_CHECK_PERIOD: Duration = Duration::from_secs(1);

/// Moves messages from the crate's stream to the inbox until the stream ends.
async fn pump(
    mut stream: MessageStream,
    inbox: Arc<Inbox>,
    pubsub: Pubsub,
    name: String,
    hand_back_after: Duration,
) {
    let mut check = tokio::time::interval(HAND_BACK_CHECK_PERIOD);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let end = loop {
        // One `next()` future is kept across checks: cancelling it would restart the crate's
        // reconnect backoff.
        let item = {
            let next = stream.next();
            tokio::pin!(next);
            loop {
                tokio::select! {
                    item = &mut next => break item,
                    _ = check.tick() => inbox.hand_back_older_than(hand_back_after, &name),
                }
            }
        };
        match item {
            Some(Ok((message, handler))) => inbox.push(message, handler),
            Some(Err(e)) => break Err(pubsub.rpc_error("streaming pull", &name, e)),
            None => break Ok(()),
        }
    };
    inbox.close(end);
}

/// A subscriber client: one gRPC connection pool.
async fn new_subscriber(
    credentials: &Credentials,
    endpoint: Option<&str>,
) -> Result<Subscriber, google_cloud_gax::client_builder::Error> {
    let mut builder = Subscriber::builder().with_credentials(credentials.clone());
    if let Some(e) = endpoint {
        builder = builder.with_endpoint(e);
    }
    builder.build().await
}

/// The settings shared by the three admin clients.
struct AdminSettings {
    endpoint: Option<String>,
    credentials: Credentials,
    rpc_timeout: Duration,
}

impl AdminSettings {
    /// Endpoint, credentials, and a retry policy bounded by `rpc_timeout`: idempotent calls
    /// retry `UNAVAILABLE`, and any call retries errors that happened before it was sent
    /// (connection refused), with exponential backoff, until the time limit.
    fn apply<F>(&self, builder: ClientBuilder<F, Credentials>) -> ClientBuilder<F, Credentials> {
        let builder = builder
            .with_credentials(self.credentials.clone())
            .with_retry_policy(Aip194Strict.with_time_limit(self.rpc_timeout))
            .with_attempt_timeout(self.rpc_timeout);
        match &self.endpoint {
            Some(e) => builder.with_endpoint(e.clone()),
            None => builder,
        }
    }
}

/// `host:port` (as in `PUBSUB_EMULATOR_HOST`) to `http://host:port`; an explicit `http://` or
/// `https://` prefix is kept.
fn emulator_endpoint(host: &str) -> Result<String, PubsubError> {
    let host = host.trim();
    if host.starts_with("http://") || host.starts_with("https://") {
        return Ok(host.trim_end_matches('/').to_string());
    }
    let valid = host
        .rsplit_once(':')
        .is_some_and(|(h, port)| !h.is_empty() && port.parse::<u16>().is_ok());
    if !valid {
        return Err(PubsubError::new(
            "connect",
            host,
            "PUBSUB_EMULATOR_HOST must be host:port, for example 127.0.0.1:8085".to_string(),
        ));
    }
    Ok(format!("http://{host}"))
}

/// Credentials from a key file (service account or authorized user), or Application Default
/// Credentials. Errors name the file, never its content.
fn load_credentials(file: Option<&Path>) -> Result<Credentials, PubsubError> {
    let Some(path) = file else {
        return gcp_credentials::Builder::default().build().map_err(|e| {
            PubsubError::new(
                "load credentials",
                "application default credentials",
                e.to_string(),
            )
            .with_source(e)
        });
    };
    let shown = path.display().to_string();
    let fail = |detail: String| PubsubError::new("load credentials", shown.clone(), detail);
    let text = std::fs::read_to_string(path).map_err(|e| {
        fail(format!(
            "cannot read GOOGLE_APPLICATION_CREDENTIALS file: {e}"
        ))
    })?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
        fail(format!(
            "not a JSON key file (line {}, column {})",
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
        other => {
            return Err(fail(format!(
                "unsupported credentials type `{other}`: expected a service-account key"
            )));
        }
    };
    built.map_err(|e| fail(format!("invalid {kind} key: {e}")).with_source(e))
}

fn code(error: &google_cloud_pubsub::Error) -> Option<Code> {
    error.status().map(|s| s.code)
}

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A failed Pub/Sub operation: which operation, on which resource, and why.
///
/// `Display` is one line: `Pub/Sub <operation> <resource>: <detail>`; the underlying client
/// error, when there is one, is the [`source`](std::error::Error::source).
#[derive(Debug)]
pub struct PubsubError {
    operation: &'static str,
    resource: String,
    detail: String,
    code: Option<Code>,
    transient: bool,
    published: Option<usize>,
    source: Option<BoxError>,
}

impl PubsubError {
    fn new(operation: &'static str, resource: impl Into<String>, detail: String) -> Self {
        Self {
            operation,
            resource: resource.into(),
            detail,
            code: None,
            transient: false,
            published: None,
            source: None,
        }
    }

    fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// The operation that failed (`create topic`, `publish`, `streaming pull`...).
    pub fn operation(&self) -> &'static str {
        self.operation
    }

    /// The resource's full name (or the endpoint / file for connection and credential errors).
    pub fn resource(&self) -> &str {
        &self.resource
    }

    /// The gRPC status code, if the server answered.
    pub fn code(&self) -> Option<Code> {
        self.code
    }

    /// The resource (or one it refers to, like the topic of a new subscription) does not exist.
    pub fn is_not_found(&self) -> bool {
        self.code == Some(Code::NotFound)
    }

    /// The server does not implement the call (the emulator lacks some features).
    pub fn is_unimplemented(&self) -> bool {
        self.code == Some(Code::Unimplemented)
    }

    /// Worth retrying later with backoff: unreachable or overloaded server, timeout, transient
    /// credential failure.
    pub fn is_transient(&self) -> bool {
        self.transient
    }

    /// For [`Pubsub::publish`]: how many of the messages were published before the error.
    pub fn published(&self) -> Option<usize> {
        self.published
    }
}

impl fmt::Display for PubsubError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.resource.is_empty() {
            write!(f, "Pub/Sub {}: {}", self.operation, self.detail)
        } else {
            write!(
                f,
                "Pub/Sub {} `{}`: {}",
                self.operation, self.resource, self.detail
            )
        }
    }
}

impl std::error::Error for PubsubError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emulator_host_becomes_http_endpoint() {
        for (host, want) in [
            ("127.0.0.1:8085", Some("http://127.0.0.1:8085")),
            ("localhost:8681", Some("http://localhost:8681")),
            ("http://10.0.0.1:8085/", Some("http://10.0.0.1:8085")),
            ("127.0.0.1", None),
            (":8085", None),
            ("host:port", None),
        ] {
            assert_eq!(emulator_endpoint(host).ok().as_deref(), want, "{host}");
        }
    }

    #[test]
    fn credentials_errors_name_the_file_not_its_content() {
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
}
