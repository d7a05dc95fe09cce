//! The log format: readable text, or one JSON object per line (`LOG_FORMAT=json`), which
//! SaladCloud's log explorer turns into queryable fields.
//!
//! A JSON line is flat: `timestamp`, `level`, `message`, the fields of every span the event
//! is in (outermost first: a job's lines carry `job_id`, `attempt`, `module`, `worker` from
//! the worker's job span), the event's own fields, and the fields the binary passes in for
//! every line (SaladCloud's machine and container group ids). A later field of the same name
//! wins. Task text reaches a line only escaped ([`crate::inert`]); serde_json escapes the
//! rest, so a line always parses.

use std::fmt;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// How log lines look.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Readable lines (colored on a terminal).
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    /// `text` or `json`.
    fn from_str(s: &str) -> Result<LogFormat, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("the log format is `text` or `json`, not `{other}`")),
        }
    }
}

/// Installs the process's logger, writing to stderr: `filter` decides what is logged,
/// `fields` are added to every JSON line (ignored for text). Does nothing if a logger is
/// installed already (a test process).
pub fn init(format: LogFormat, filter: EnvFilter, fields: Vec<(String, String)>) {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_target(false)
            .try_init(),
        LogFormat::Json => builder
            .fmt_fields(JsonFields::new())
            .event_format(JsonLines { fields })
            .try_init(),
    };
}

/// The JSON line format (see the module docs).
#[derive(Debug, Clone, Default)]
pub struct JsonLines {
    /// Added to every line.
    pub fields: Vec<(String, String)>,
}

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut line = Map::new();
        let mut time = String::new();
        SystemTime.format_time(&mut Writer::new(&mut time))?;
        line.insert("timestamp".into(), Value::String(time));
        let level = event.metadata().level().as_str().to_ascii_lowercase();
        line.insert("level".into(), Value::String(level));
        for (k, v) in &self.fields {
            line.insert(k.clone(), Value::String(v.clone()));
        }
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let ext = span.extensions();
                // With `JsonFields` a span's fields are kept as one JSON object.
                if let Some(f) = ext.get::<FormattedFields<N>>()
                    && let Ok(Value::Object(fields)) = serde_json::from_str(&f.fields)
                {
                    line.extend(fields);
                }
            }
        }
        event.record(&mut Fields(&mut line));
        writeln!(writer, "{}", Value::Object(line))
    }
}

/// Collects an event's fields into a JSON object.
struct Fields<'a>(&'a mut Map<String, Value>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().into(), format!("{value:?}").into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::fmt::MakeWriter;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    impl<'a> MakeWriter<'a> for Buf {
        type Writer = Buf;
        fn make_writer(&'a self) -> Buf {
            self.clone()
        }
    }

    #[test]
    fn a_line_is_one_flat_object_with_span_and_static_fields() {
        let buf = Buf::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(buf.clone())
            .fmt_fields(JsonFields::new())
            .event_format(JsonLines {
                fields: vec![("salad_machine_id".into(), "m-1".into())],
            })
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("job", job_id = "j-1", attempt = 2u32);
            let _in = span.enter();
            tracing::warn!(fuel = 7u64, reason = %"a \"quoted\"\nline", "task trapped");
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1, "{text}");
        let v: Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(v["level"], "warn");
        assert_eq!(v["message"], "task trapped");
        assert_eq!(v["job_id"], "j-1");
        assert_eq!(v["attempt"], 2);
        assert_eq!(v["fuel"], 7);
        assert_eq!(v["reason"], "a \"quoted\"\nline");
        assert_eq!(v["salad_machine_id"], "m-1");
        assert!(v["timestamp"].as_str().unwrap().len() > 10);
    }
}
