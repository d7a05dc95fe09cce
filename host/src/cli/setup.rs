//! `taskhost setup`: creates, idempotently, everything the worker needs.

use std::process::ExitCode;

use clap::Args;

use super::config::{PubsubArgs, StoreArgs, SubscriptionArgs, TopicArgs, ensure_queue};
use taskhost::queue::Ensured;
use taskhost::queue::Queue;
use taskhost::queue::pubsub::TopicSchema;
use taskhost::store::any::AnyStore;

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
    let queue = args.pubsub.connect().await?;
    let topic = &args.topics.topic_id;
    // When the schema step creates the jobs topic, that is what `setup` reports for it.
    let mut topic_from_schema = None;
    if let Some(schema) = &args.schema_id {
        match &queue {
            Queue::PubSub(ps) => {
                let r = ps.ensure_schema_on_topic(topic, schema).await?;
                said("schema", schema, r.schema);
                match r.topic {
                    TopicSchema::Created => topic_from_schema = Some(Ensured::Created),
                    TopicSchema::Found => topic_from_schema = Some(Ensured::Found),
                    TopicSchema::ExistsWithoutSchema => println!(
                        "note: topic {topic} exists without a schema: messages are not checked; \
                         recreate the topic to attach {schema}"
                    ),
                    TopicSchema::ExistsWithOtherSchema {
                        schema: other,
                        encoding,
                    } => println!(
                        "note: topic {topic} has another schema ({other}, {encoding}); left unchanged"
                    ),
                }
            }
            Queue::Local(_) => {
                println!("skipped schema {schema}: the embedded queue has no schemas")
            }
        }
    }
    for (what, name, ensured) in ensure_queue(&queue, &args.topics, &args.subscription).await? {
        let ensured = match topic_from_schema {
            Some(e) if what == "topic" && name == *topic => e,
            _ => ensured,
        };
        said(what, &name, ensured);
    }
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
        // `open` never returns one observed.
        AnyStore::Observed(_) => {}
    }
    Ok(ExitCode::SUCCESS)
}
