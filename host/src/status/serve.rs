//! `taskhost status --serve ADDR`: one HTML page embedded in the binary (`page.html`: plain
//! JS, no build step, no CDN) and the JSON it fetches.
//!
//! - `GET /`: the page. It fetches `/api/status` every few seconds and shows the totals, a
//!   page of jobs (filtered by state, paged) and the workers. Task text (results, errors) is
//!   set with `textContent` only.
//! - `GET /api/status?state=S&page=N&size=K`: the [`Overview`](super::page::Overview) as JSON,
//!   with the workers. The listing behind it is taken at most once per [`FRESH_FOR`], however
//!   many browsers ask.
//!
//! [`handle`] is the whole application; [`serve`] is a minimal hyper loop around it (a
//! generic server can take the handler instead).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Bytes;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use super::page::{Selection, overview};
use super::{Scan, scan, workers};
use crate::ids::JobState;
use crate::store::any::AnyStore;

/// The page, embedded.
pub const PAGE: &str = include_str!("page.html");

/// How long one listing serves every request.
pub const FRESH_FOR: Duration = Duration::from_secs(2);

/// Most jobs on one page.
pub const MAX_PAGE_SIZE: usize = 500;

/// What the handler reads, and its last listing.
pub struct App {
    /// The store whose jobs and workers are shown.
    pub store: AnyStore,
    /// A checkpoint written within this window counts as running.
    pub window: Duration,
    cached: Mutex<Option<Cached>>,
}

struct Cached {
    at: Instant,
    scan: Arc<Scan>,
    workers: Arc<Vec<workers::WorkerView>>,
}

impl App {
    /// An app over `store`, with no listing yet (the first request takes one).
    pub fn new(store: AnyStore, window: Duration) -> App {
        App {
            store,
            window,
            cached: Mutex::new(None),
        }
    }

    /// The listing and the workers, read again once older than [`FRESH_FOR`].
    async fn snapshot(&self) -> anyhow::Result<(Arc<Scan>, Arc<Vec<workers::WorkerView>>)> {
        let mut cached = self.cached.lock().await;
        if let Some(c) = cached.as_ref()
            && c.at.elapsed() < FRESH_FOR
        {
            return Ok((c.scan.clone(), c.workers.clone()));
        }
        let s = Arc::new(scan(&self.store).await?);
        let w = Arc::new(workers::read_all(&self.store, s.now_ms).await?);
        *cached = Some(Cached {
            at: Instant::now(),
            scan: s.clone(),
            workers: w.clone(),
        });
        Ok((s, w))
    }
}

/// The query of `/api/status`.
fn selection(query: &str, window: Duration) -> Result<Selection, String> {
    let mut sel = Selection {
        filter: None,
        page: 0,
        page_size: super::page::DEFAULT_PAGE_SIZE,
        window,
    };
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "state" if v.is_empty() || v == "all" => sel.filter = None,
            "state" => sel.filter = Some(v.parse::<JobState>()?),
            "page" => sel.page = v.parse().map_err(|_| format!("page {v:?}"))?,
            "size" => {
                sel.page_size = v
                    .parse::<usize>()
                    .map_err(|_| format!("size {v:?}"))?
                    .clamp(1, MAX_PAGE_SIZE)
            }
            _ => {}
        }
    }
    Ok(sel)
}

fn respond(status: StatusCode, kind: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, kind)
        .header(header::CACHE_CONTROL, "no-store")
        // The page runs no script but its own and loads nothing from elsewhere.
        .header(
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:",
        )
        .header("x-content-type-options", "nosniff")
        .body(Full::new(body.into()))
        .expect("a valid response")
}

/// Answers one request.
pub async fn handle<B>(app: &App, req: Request<B>) -> Response<Full<Bytes>> {
    const TEXT: &str = "text/plain; charset=utf-8";
    if req.method() != http::Method::GET {
        return respond(StatusCode::METHOD_NOT_ALLOWED, TEXT, "GET only\n");
    }
    match req.uri().path() {
        "/" => respond(StatusCode::OK, "text/html; charset=utf-8", PAGE),
        "/api/status" => {
            let sel = match selection(req.uri().query().unwrap_or(""), app.window) {
                Ok(s) => s,
                Err(e) => return respond(StatusCode::BAD_REQUEST, TEXT, format!("{e}\n")),
            };
            let answer = async {
                let (scan, workers) = app.snapshot().await?;
                let mut o = overview(&app.store, &scan, sel).await?;
                o.workers = Some(workers.as_ref().clone());
                anyhow::Ok(serde_json::to_vec(&o)?)
            };
            match answer.await {
                Ok(json) => respond(StatusCode::OK, "application/json", json),
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "status page: cannot read the store");
                    respond(
                        StatusCode::SERVICE_UNAVAILABLE,
                        TEXT,
                        "cannot read the store; see the server's log\n",
                    )
                }
            }
        }
        _ => respond(StatusCode::NOT_FOUND, TEXT, "not found\n"),
    }
}

/// Serves [`handle`] on `addr` over HTTP/1 until `stop` is cancelled; `bound` gets the
/// address it listens on (port 0 picks one).
pub async fn serve(
    app: Arc<App>,
    addr: SocketAddr,
    bound: impl FnOnce(SocketAddr),
    stop: CancellationToken,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    bound(listener.local_addr()?);
    loop {
        let (stream, _) = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "status page: accept failed");
                    continue;
                }
            },
        };
        let app = app.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let app = app.clone();
                async move { Ok::<_, Infallible>(handle(&app, req).await) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(crate::observe::http::HEADER_TIMEOUT)
                .serve_connection(io, service)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_selects_a_state_and_a_page() {
        let w = Duration::from_secs(60);
        let s = selection("state=failed&page=3&size=100000", w).unwrap();
        assert_eq!(s.filter, Some(JobState::Failed));
        assert_eq!((s.page, s.page_size), (3, MAX_PAGE_SIZE));
        let all = selection("state=all", w).unwrap();
        assert_eq!(all.filter, None);
        assert_eq!(all.page_size, crate::status::page::DEFAULT_PAGE_SIZE);
        for bad in ["state=gone", "page=-1", "size=x"] {
            assert!(selection(bad, w).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_page_sets_task_text_as_text_only_and_loads_nothing_from_elsewhere() {
        for markup_sink in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
        ] {
            assert!(!PAGE.contains(markup_sink), "{markup_sink}");
        }
        assert!(!PAGE.contains("http://") && !PAGE.contains("https://"));
        assert!(PAGE.contains("textContent"));
    }

    #[tokio::test]
    async fn only_get_of_the_page_and_the_api() {
        let dir = tempfile::tempdir().unwrap();
        let store = AnyStore::Dir(crate::store::dir::DirStore::open(dir.path()).unwrap());
        let app = App::new(store, Duration::from_secs(60));
        let req = |m: &str, uri: &str| Request::builder().method(m).uri(uri).body(()).unwrap();
        assert_eq!(handle(&app, req("GET", "/")).await.status(), StatusCode::OK);
        assert_eq!(
            handle(&app, req("POST", "/")).await.status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(
            handle(&app, req("GET", "/x")).await.status(),
            StatusCode::NOT_FOUND
        );
        let api = handle(&app, req("GET", "/api/status?state=queued")).await;
        assert_eq!(api.status(), StatusCode::OK);
        let bad = handle(&app, req("GET", "/api/status?state=nope")).await;
        assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    }

    /// A client that connects and sends nothing is dropped after the header timeout, as by the
    /// metrics server: idle connections do not pile up in a long-running `status --serve`.
    #[tokio::test(start_paused = true)]
    async fn a_client_that_sends_no_request_is_dropped() {
        use tokio::io::AsyncReadExt as _;
        let dir = tempfile::tempdir().unwrap();
        let store = AnyStore::Dir(crate::store::dir::DirStore::open(dir.path()).unwrap());
        let app = Arc::new(App::new(store, Duration::from_secs(60)));
        let stop = CancellationToken::new();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let server = tokio::spawn(serve(
            app,
            "127.0.0.1:0".parse().unwrap(),
            move |a| {
                let _ = tx.send(a);
            },
            stop.clone(),
        ));
        let addr = rx.await.unwrap();
        let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut answer = Vec::new();
        // Virtual time: the header timeout (10 s) passes at once; the guard only if the
        // server never closes the connection (what it may answer first does not matter).
        let read = tokio::time::timeout(Duration::from_secs(600), idle.read_to_end(&mut answer));
        assert!(read.await.is_ok(), "the idle connection is still open");
        stop.cancel();
        server.await.unwrap().unwrap();
    }
}
