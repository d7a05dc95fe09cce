//! A local stand-in for SaladCloud's instance metadata service (IMDS, the OpenAPI spec
//! `salad-cloud-imds.yaml`, served at `http://169.254.169.254` inside an instance). It serves
//! the documented operations and checks the shape of every request against the spec:
//!
//! - `GET /v1/status` → 200 `{"ready": bool, "started": bool}`
//! - `GET /v1/token` → 200 `{"jwt": "..."}`
//! - `POST /v1/reallocate` `{"reason": string of 1..=1000 characters}` → 204
//! - `GET /v1/deletion-cost` → 200 `{"deletion_cost": int32}`
//! - `PUT /v1/deletion-cost` `{"deletion_cost": int32}` → 204
//!
//! Every request must carry `Metadata: true` and no `X-Forwarded-*` header, and must name
//! the path itself (a request through a proxy names an absolute URL); a body must be JSON of
//! the documented shape. A request that breaks a rule is answered 400 and recorded in
//! [`Imds::violations`], which a test asserts empty.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use serde_json::Value;

/// The token the stand-in serves at `/v1/token`.
pub const JWT: &str = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJzdGFuZC1pbiJ9.";

#[derive(Default, Debug)]
struct State {
    deletion_costs: Vec<i32>,
    reallocations: Vec<String>,
    violations: Vec<String>,
    requests: usize,
}

/// The stand-in, serving on a free local port until the test process ends.
#[derive(Clone)]
pub struct Imds {
    url: String,
    state: Arc<Mutex<State>>,
}

impl Imds {
    /// Starts serving on a free port of 127.0.0.1.
    pub fn start() -> Imds {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let state = shared.clone();
                std::thread::spawn(move || serve(conn, &state));
            }
        });
        Imds { url, state }
    }

    /// The base URL (`SALAD_IMDS_URL`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Every deletion cost PUT so far, in order.
    pub fn deletion_costs(&self) -> Vec<i32> {
        self.state.lock().unwrap().deletion_costs.clone()
    }

    /// Every reallocation reason POSTed so far.
    pub fn reallocations(&self) -> Vec<String> {
        self.state.lock().unwrap().reallocations.clone()
    }

    /// The requests that broke the spec's rules, each with why.
    pub fn violations(&self) -> Vec<String> {
        self.state.lock().unwrap().violations.clone()
    }

    /// How many requests arrived.
    pub fn requests(&self) -> usize {
        self.state.lock().unwrap().requests
    }
}

fn serve(conn: TcpStream, state: &Mutex<State>) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let mut parts = line.split_whitespace();
    let (method, target) = (
        parts.next().unwrap_or("").to_owned(),
        parts.next().unwrap_or("").to_owned(),
    );
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
    }
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let length: usize = header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    let (status, reply) = answer(&method, &target, &headers, &body, state);
    let reply = reply.map(|v| v.to_string()).unwrap_or_default();
    let reason = if status == 200 {
        "OK"
    } else if status == 204 {
        "No Content"
    } else {
        "Error"
    };
    let mut conn = conn;
    let _ = write!(
        conn,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reply}",
        if status == 204 { 0 } else { reply.len() },
    );
}

fn answer(
    method: &str,
    target: &str,
    headers: &[(String, String)],
    body: &[u8],
    state: &Mutex<State>,
) -> (u16, Option<Value>) {
    let mut st = state.lock().unwrap();
    st.requests += 1;
    let bad = |st: &mut State, why: String| {
        st.violations.push(format!("{method} {target}: {why}"));
        (400, Some(serde_json::json!({"message": "bad request"})))
    };
    if !headers.iter().any(|(k, v)| k == "metadata" && v == "true") {
        return bad(&mut st, "no `Metadata: true` header".into());
    }
    if let Some((k, _)) = headers.iter().find(|(k, _)| k.starts_with("x-forwarded-")) {
        return bad(&mut st, format!("a {k} header"));
    }
    if !target.starts_with('/') {
        return bad(&mut st, "an absolute URL: sent through a proxy".into());
    }
    let json = || serde_json::from_slice::<Value>(body).ok();
    let json_type = headers
        .iter()
        .any(|(k, v)| k == "content-type" && v.starts_with("application/json"));
    match (method, target) {
        ("GET", "/v1/status") => (
            200,
            Some(serde_json::json!({"ready": true, "started": true})),
        ),
        ("GET", "/v1/token") => (200, Some(serde_json::json!({"jwt": JWT}))),
        ("GET", "/v1/deletion-cost") => {
            let cost = st.deletion_costs.last().copied().unwrap_or(0);
            (200, Some(serde_json::json!({"deletion_cost": cost})))
        }
        ("PUT", "/v1/deletion-cost") => {
            let cost = json()
                .filter(|_| json_type)
                .and_then(|v| v.get("deletion_cost")?.as_i64())
                .and_then(|c| i32::try_from(c).ok());
            match cost {
                Some(c) => {
                    st.deletion_costs.push(c);
                    (204, None)
                }
                None => bad(
                    &mut st,
                    format!("not {{\"deletion_cost\": int32}}: {body:?}"),
                ),
            }
        }
        ("POST", "/v1/reallocate") => {
            let reason = json()
                .filter(|_| json_type)
                .and_then(|v| Some(v.get("reason")?.as_str()?.to_owned()))
                .filter(|r| (1..=1000).contains(&r.chars().count()));
            match reason {
                Some(r) => {
                    st.reallocations.push(r);
                    (204, None)
                }
                None => bad(
                    &mut st,
                    format!("not {{\"reason\": 1..=1000 chars}}: {body:?}"),
                ),
            }
        }
        _ => (404, Some(serde_json::json!({"message": "not found"}))),
    }
}
