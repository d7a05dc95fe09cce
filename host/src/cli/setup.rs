//! `taskhost setup`: creates, idempotently, everything the worker needs.

use std::process::ExitCode;

use clap::Args;

use super::config::{PubsubArgs, StoreArgs, SubscriptionArgs, TopicArgs};
use crate::pubsub::{DEFAULT_MAX_DELIVERY_ATTEMPTS, Ensured, SubscriptionSettings, TopicSchema};
use crate::store::any::AnyStore;

/// Create the topics, subscriptions, schema and bucket the worker needs (idempotent).
///
/// Creates the jobs topic, the dead-letter topic, the pull subscription (ack deadline,
/// dead-letter policy, retention), a subscription on the dead-letter topic, optionally the
/// guide's Avro schema on the jobs topic, and the bucket where the server allows it.
///
/// Safe to run again: what exists is found and left as it is. Prints what it created or found.
/// The subscription gets a high maxDeliveryAttempts (100) because Pub/Sub counts every lapsed
/// lease as a delivery attempt; the worker counts real failures itself (MAX_FAILURES).
#[derive(Args, Debug)]
pub struct SetupArgs {
    #[command(flatten)]
    pub pubsub: PubsubArgs,
    #[command(flatten)]
    pub topics: TopicArgs,
    #[command(flatten)]
    pub subscription: SubscriptionArgs,
    #[command(flatten)]
    pub store: StoreArgs,
    /// Also create the guide's Avro schema (job_id: string, steps: int) with this id and
    /// attach it to the jobs topic (only when the topic is created here).
    #[arg(long, env = "SCHEMA_ID")]
    pub schema_id: Option<String>,
}

fn said(what: &str, name: &str, e: Ensured) {
    let verb = match e {
        Ensured::Created => "created",
        Ensured::Found => "found  ",
    };
    println!("{verb} {what} {name}");
}

pub async fn main(args: SetupArgs) -> anyhow::Result<ExitCode> {
    let ps = args.pubsub.connect().await?;
    let topic = &args.topics.topic_id;
    match &args.schema_id {
        Some(schema) => {
            let r = ps.ensure_schema_on_topic(topic, schema).await?;
            said("schema", schema, r.schema);
            match r.topic {
                TopicSchema::Created => said("topic", topic, Ensured::Created),
                TopicSchema::Found => said("topic", topic, Ensured::Found),
                TopicSchema::ExistsWithoutSchema => println!(
                    "found   topic {topic} (it has no schema: messages are not checked; \
                     recreate the topic to attach {schema})"
                ),
                TopicSchema::ExistsWithOtherSchema {
                    schema: other,
                    encoding,
                } => println!(
                    "found   topic {topic} (with another schema {other}, {encoding}; left unchanged)"
                ),
            }
        }
        None => said("topic", topic, ps.ensure_topic(topic).await?),
    }
    let dlt = args.topics.dead_letter_topic();
    said("topic", &dlt, ps.ensure_topic(&dlt).await?);
    let sub = &args.subscription.subscription_id;
    said(
        "subscription",
        sub,
        ps.ensure_subscription(
            sub,
            topic,
            &SubscriptionSettings {
                ack_deadline_secs: args.subscription.ack_deadline_seconds,
                dead_letter_topic_id: Some(dlt.clone()),
                max_delivery_attempts: DEFAULT_MAX_DELIVERY_ATTEMPTS,
                ..SubscriptionSettings::default()
            },
        )
        .await?,
    );
    let dls = SubscriptionArgs::dead_letter_subscription(&args.topics);
    said(
        "subscription",
        &dls,
        ps.ensure_subscription(&dls, &dlt, &SubscriptionSettings::default())
            .await?,
    );
    match args.store.open()? {
        AnyStore::S3(s3) => match s3.ensure_bucket().await {
            Ok(created) => said(
                "bucket",
                s3.bucket(),
                if created {
                    Ensured::Created
                } else {
                    Ensured::Found
                },
            ),
            Err(e) => println!(
                "skipped bucket {} (create it in the R2 dashboard if it does not exist): {e:#}",
                s3.bucket()
            ),
        },
        AnyStore::Dir(d) => println!("found   store directory {}", d.root().display()),
    }
    Ok(ExitCode::SUCCESS)
}
