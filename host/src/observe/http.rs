//! A tiny HTTP/1.1 server for the metrics and the probes: `GET` (or `HEAD`) of a path,
//! answered by a plain function of the path. Nothing else is parsed, nothing is read from the
//! request body, and each connection is served on its own task, so a slow scraper never
//! holds another one up.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// How long a client may take to send its request's head (a stuck client is dropped); the
/// status page's server (`status::serve`) holds its clients to it too.
pub(crate) const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// One answer: status, content type and body.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The HTTP status code (200, 404, 503, ...).
    pub status: u16,
    /// The `Content-Type` header's value.
    pub content_type: &'static str,
    /// The body; left out of the answer to a `HEAD`.
    pub body: String,
}

impl Reply {
    /// 200 with `body` of `content_type`.
    pub fn ok(content_type: &'static str, body: String) -> Reply {
        Reply {
            status: 200,
            content_type,
            body,
        }
    }

    /// `status` with a plain-text `body`.
    pub fn text(status: u16, body: String) -> Reply {
        Reply {
            status,
            content_type: "text/plain; charset=utf-8",
            body,
        }
    }
}

/// Binds `addr` and serves `route` (path → [`Reply`]) until `shutdown` is cancelled; returns
/// the bound address. `Err`: the address cannot be bound (taken, not this machine's).
pub async fn serve<F>(
    addr: SocketAddr,
    route: F,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr>
where
    F: Fn(&str) -> Reply + Send + Sync + 'static,
{
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let route = Arc::new(route);
    tokio::spawn(async move {
        loop {
            let (stream, _) = tokio::select! {
                _ = shutdown.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors, say: wait a little rather than spin.
                        tracing::debug!(error = %e, "metrics server: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let route = Arc::clone(&route);
            let stop = shutdown.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let route = Arc::clone(&route);
                    async move { Ok::<_, Infallible>(answer(&*route, &req)) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service);
                tokio::pin!(conn);
                tokio::select! {
                    _ = conn.as_mut() => {}
                    _ = stop.cancelled() => conn.as_mut().graceful_shutdown(),
                }
            });
        }
    });
    Ok(bound)
}

fn answer<F: Fn(&str) -> Reply>(route: &F, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let head = req.method() == Method::HEAD;
    let reply = if req.method() == Method::GET || head {
        route(req.uri().path())
    } else {
        Reply::text(405, "only GET\n".into())
    };
    let body = if head { String::new() } else { reply.body };
    Response::builder()
        .status(StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header(hyper::header::CONTENT_TYPE, reply.content_type)
        .header(hyper::header::CACHE_CONTROL, "no-store")
        .body(Full::new(Bytes::from(body)))
        .expect("a response of a valid status and static headers")
}
