//! Publishing on the official crate: batched, every result awaited.

use google_cloud_pubsub::model;

use super::{Pubsub, PubsubError};
use crate::queue::OutgoingMessage;

impl Pubsub {
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
        let (mut err, authentication) = match &error {
            google_cloud_pubsub::error::PublishError::Rpc(rpc) => (
                self.describe_rpc_error("publish", &topic, rpc),
                rpc.is_authentication(),
            ),
            other => (
                PubsubError::new("publish", topic.clone(), other.to_string()),
                false,
            ),
        };
        err.detail = format!("{published} of {total} messages published; {}", err.detail);
        err.published = Some(published);
        // A credentials failure's source may quote a token answer: its redacted text is in
        // the detail already.
        Err(if authentication {
            err
        } else {
            err.with_source(error)
        })
    }
}
