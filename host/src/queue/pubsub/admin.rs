//! Idempotent admin calls on the official crate: topics, subscriptions (dead-letter policy),
//! the guide's Avro schema, and `ValidateMessage`.

use google_cloud_gax::error::rpc::Code;
use google_cloud_pubsub::model;

use super::{JOB_SAMPLE_INVALID, JOB_SAMPLE_VALID, JOB_SCHEMA_AVRO, Pubsub, PubsubError, code};
use crate::queue::{Ensured, SubscriptionSettings};

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
impl Pubsub {
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

    /// Whether the topic exists: `Ok(false)` when it does not, `Ok(true)` when it does or the
    /// credentials may not look (the Publisher role cannot `get` a topic).
    pub async fn topic_exists(&self, topic_id: &str) -> Result<bool, PubsubError> {
        let name = self.topic_path(topic_id);
        match self.topics.get_topic().set_topic(&name).send().await {
            Ok(_) => Ok(true),
            Err(e) if code(&e) == Some(Code::NotFound) => Ok(false),
            Err(e) if code(&e) == Some(Code::PermissionDenied) => Ok(true),
            Err(e) => Err(self.rpc_error("get topic", &name, e)),
        }
    }

    /// Whether these credentials may publish to the topic (IAM `TestIamPermissions`):
    /// `None` when the server cannot tell (the emulator does not implement IAM).
    pub async fn may_publish(&self, topic_id: &str) -> Result<Option<bool>, PubsubError> {
        use super::grpc::{TestIamPermissionsRequest, TestIamPermissionsResponse};
        const PUBLISH: &str = "pubsub.topics.publish";
        let name = self.topic_path(topic_id);
        let answer: Result<TestIamPermissionsResponse, _> = self
            .grpc
            .call_service(
                "test IAM permissions",
                &name,
                "google.iam.v1.IAMPolicy",
                "TestIamPermissions",
                TestIamPermissionsRequest {
                    resource: name.clone(),
                    permissions: vec![PUBLISH.to_owned()],
                },
            )
            .await;
        match answer {
            Ok(r) => Ok(Some(r.permissions.iter().any(|p| p == PUBLISH))),
            Err(e) if e.is_unimplemented() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The subscription as the worker's startup check needs it, in one request: `None` if
    /// it does not exist; else whether it has a dead-letter policy (then Pub/Sub counts
    /// deliveries), `None` when the credentials may not look (a worker needs only subscriber
    /// rights). Remembers its ack deadline for [`Pubsub::pull`].
    pub async fn lookup_subscription(
        &self,
        sub_id: &str,
    ) -> Result<Option<SubscriptionFacts>, PubsubError> {
        let name = self.subscription_path(sub_id);
        match self
            .subscriptions
            .get_subscription()
            .set_subscription(&name)
            .send()
            .await
        {
            Ok(sub) => {
                if let Ok(secs) = u64::try_from(sub.ack_deadline_seconds) {
                    self.remember_deadline(&name, secs);
                }
                let policy = sub.dead_letter_policy.as_ref();
                Ok(Some(SubscriptionFacts {
                    dead_letter_policy: Some(
                        policy.is_some_and(|p| !p.dead_letter_topic.is_empty()),
                    ),
                }))
            }
            Err(e) if code(&e) == Some(Code::NotFound) => Ok(None),
            Err(e) if code(&e) == Some(Code::PermissionDenied) => Ok(Some(SubscriptionFacts {
                dead_letter_policy: None,
            })),
            Err(e) => Err(self.rpc_error("get subscription", &name, e)),
        }
    }
}

/// What [`Pubsub::lookup_subscription`] found of an existing subscription.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SubscriptionFacts {
    /// Whether it has a dead-letter policy; `None`: the credentials may not look.
    pub dead_letter_policy: Option<bool>,
}
