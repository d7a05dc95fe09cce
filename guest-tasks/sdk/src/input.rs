//! The job document as loosely typed fields, for a task that words its own messages.
//!
//! A typed [`Task::Input`](crate::Task::Input) is usually simpler; [`Fields`] is for a
//! task whose errors must name the field in a sentence of its own, or that accepts
//! numbers as strings. Every error is a clear sentence naming the field, meant to be
//! returned as the task's `Err` (a bad input is a permanent failure):
//!
//! ```ignore
//! impl Task for MyTask {
//!     type Input = Fields;
//!     type Output = Output;
//!     fn run(input: Fields) -> Result<Output, Error> {
//!         let steps = input.u64("steps")?;                 // required
//!         let every = input.u64_or("checkpoint_every", 1)?; // optional, with a default
//!         ...
//!     }
//! }
//! ```

use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

use crate::Error;

/// A job document: a JSON object. As a [`Task::Input`](crate::Task::Input), any other
/// JSON is `bad input: the input must be a JSON object, like {"job_id": "job-0"}`.
#[derive(Debug, Clone)]
pub struct Fields {
    fields: Map<String, Value>,
}

impl<'de> Deserialize<'de> for Fields {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Fields, D::Error> {
        match Value::deserialize(deserializer)? {
            Value::Object(fields) => Ok(Fields { fields }),
            _ => Err(serde::de::Error::custom(
                "the input must be a JSON object, like {\"job_id\": \"job-0\"}",
            )),
        }
    }
}

impl Fields {
    /// The raw value of field `name`, if present (`null` counts as absent).
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.fields.get(name).filter(|v| !v.is_null())
    }

    /// The string field `name`, if present and a string.
    pub fn str(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(Value::as_str)
    }

    /// The required field `name` as a non-negative integer.
    ///
    /// Accepts a JSON integer or a string of decimal digits (a job submitted from a CSV
    /// file may carry its numbers as strings).
    ///
    /// # Errors
    ///
    /// When the field is missing, negative, fractional, too large or not a number.
    pub fn u64(&self, name: &str) -> Result<u64, Error> {
        match self.get(name) {
            None => Err(Error::msg(format!(
                "the input has no \"{name}\": it must be a non-negative integer"
            ))),
            Some(value) => as_u64(value).ok_or_else(|| {
                Error::msg(format!(
                    "\"{name}\" must be a non-negative integer, not {value}"
                ))
            }),
        }
    }

    /// The optional field `name` as a non-negative integer, `default` when absent.
    ///
    /// # Errors
    ///
    /// As [`Fields::u64`] when the field is present but not a non-negative integer.
    pub fn u64_or(&self, name: &str, default: u64) -> Result<u64, Error> {
        match self.get(name) {
            None => Ok(default),
            Some(_) => self.u64(name),
        }
    }

    /// The optional field `name` as a non-negative integer, `None` when absent.
    ///
    /// # Errors
    ///
    /// As [`Fields::u64`] when the field is present but not a non-negative integer.
    pub fn u64_opt(&self, name: &str) -> Result<Option<u64>, Error> {
        match self.get(name) {
            None => Ok(None),
            Some(_) => self.u64(name).map(Some),
        }
    }

    /// The job id: the document's `job_id` when it is a string, otherwise
    /// [`crate::job::id`].
    pub fn job_id(&self) -> String {
        match self.str("job_id") {
            Some(id) => id.to_string(),
            None => crate::job::id(),
        }
    }
}

fn as_u64(value: &Value) -> Option<u64> {
    match value {
        Value::Number(n) => n.as_u64(),
        Value::String(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
            s.parse().ok()
        }
        _ => None,
    }
}
