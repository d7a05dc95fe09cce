//! What an operator sees of a worker from the outside: Prometheus metrics ([`metrics`]), the
//! health probes ([`health`]), both served over HTTP ([`http`]), and the log format ([`logs`]).
//!
//! **API boundary:** this module reads no environment and knows no job: the binary passes
//! the address, the log format and the machine's ids in, the worker and the executor count
//! into a [`Metrics`] handed to them in their config structs.
//! **Invariant:** no label, metric or probe answer carries a job id, a key or a secret; job
//! ids appear in log lines only.

pub mod health;
pub mod http;
pub mod logs;
pub mod metrics;

pub use health::Health;
pub use metrics::{JobUsage, Metrics};

use std::net::SocketAddr;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

/// Serves `/metrics`, `/livez`, `/readyz` and `/startupz` on `addr` until `shutdown` is
/// cancelled. Binds before it returns, so a taken port is an error at startup; returns the
/// bound address (port 0 picks a free one).
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    http::serve(
        addr,
        move |path| match path {
            "/metrics" => http::Reply::ok(metrics::CONTENT_TYPE, metrics.encode()),
            "/livez" => http::Reply::text(200, "ok\n".into()),
            "/readyz" => match health.ready() {
                Ok(()) => http::Reply::text(200, "ready\n".into()),
                Err(why) => http::Reply::text(503, format!("not ready: {why}\n")),
            },
            "/startupz" => match health.started() {
                Ok(()) => http::Reply::text(200, "started\n".into()),
                Err(why) => http::Reply::text(503, format!("not started: {why}\n")),
            },
            _ => http::Reply::text(
                404,
                "not found: try /metrics, /livez, /readyz, /startupz\n".into(),
            ),
        },
        shutdown,
    )
    .await
}
