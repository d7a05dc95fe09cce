//! A local stand-in for SaladCloud's public API (`salad-cloud.yaml`, served at
//! `https://api.salad.com/api/public`), for the one container group `taskhost autoscale`
//! manages. It serves, under `/api/public`:
//!
//! - `GET /organizations/{org}/projects/{project}/containers/{group}` → 200, the group with
//!   the spec's required fields (`replicas`, `current_state.status`, ...);
//! - `PATCH` the same path, `Content-Type: application/merge-patch+json`, a JSON object whose
//!   only field is `replicas`, an integer 0..=500 → 200, the updated group;
//! - `POST .../start` and `POST .../stop`, no body → 202.
//!
//! Every request must carry the `Salad-Api-Key` header (a wrong key is answered 401 like the
//! real API; a missing one is a violation too) and name the organization, project and group
//! the stand-in was started with. A request that breaks a rule is answered 400 and recorded
//! in [`SaladApi::violations`], which a test asserts empty.

use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

use super::http::{self, Request};

#[derive(Debug)]
struct State {
    replicas: u32,
    status: String,
    calls: Vec<String>,
    violations: Vec<String>,
    requests: usize,
}

/// The stand-in and its container group's state.
#[derive(Clone)]
pub struct SaladApi {
    url: String,
    state: Arc<Mutex<State>>,
}

/// What the stand-in serves: the names and the key it accepts.
pub const ORG: &str = "acme";
/// The project.
pub const PROJECT: &str = "batch";
/// The container group.
pub const GROUP: &str = "taskhost-workers";
/// The API key it accepts.
pub const KEY: &str = "salad_cloud_user_SECRETKEY123";

impl SaladApi {
    /// Serves a group with `replicas` replicas in `status` (`running`, `stopped`, ...).
    pub fn start(replicas: u32, status: &str) -> SaladApi {
        let state = Arc::new(Mutex::new(State {
            replicas,
            status: status.to_owned(),
            calls: Vec::new(),
            violations: Vec::new(),
            requests: 0,
        }));
        let shared = state.clone();
        let url = http::serve(move |req| answer(req, &shared));
        SaladApi { url, state }
    }

    /// `SALAD_API_URL`.
    pub fn url(&self) -> String {
        format!("{}/api/public", self.url)
    }

    /// The changing calls so far: `replicas=N`, `start`, `stop`.
    pub fn calls(&self) -> Vec<String> {
        self.state.lock().unwrap().calls.clone()
    }

    /// The group's replicas and status now.
    pub fn group(&self) -> (u32, String) {
        let st = self.state.lock().unwrap();
        (st.replicas, st.status.clone())
    }

    /// How many requests arrived.
    pub fn requests(&self) -> usize {
        self.state.lock().unwrap().requests
    }

    /// The requests that broke the published shape, each with why.
    pub fn violations(&self) -> Vec<String> {
        self.state.lock().unwrap().violations.clone()
    }
}

fn group_json(st: &State) -> Value {
    json!({
        "id": "5f0c6b0e-1c2a-4f6e-9a36-2f1d3c4b5a69",
        "name": GROUP,
        "display_name": GROUP,
        "organization_name": ORG,
        "project_name": PROJECT,
        "replicas": st.replicas,
        "current_state": {
            "status": st.status,
            "start_time": "2026-12-06T06:00:00Z",
            "finish_time": "2026-12-06T06:00:00Z",
            "instance_status_counts": {
                "allocating_count": 0, "creating_count": 0, "running_count": st.replicas,
                "stopping_count": 0
            }
        },
        "autostart_policy": false,
        "container": {"image": "registry.example/taskhost:1",
                      "resources": {"cpu": 4, "memory": 4096}},
        "country_codes": [],
        "create_time": "2026-12-06T06:00:00Z",
        "update_time": "2026-12-06T06:00:00Z",
        "pending_change": false,
        "priority": "batch",
        "restart_policy": "always",
        "version": 1,
        "scheduled-scaling-enabled": false,
        "scaling-actions": []
    })
}

fn answer(req: &Request, state: &Mutex<State>) -> (u16, Option<Value>) {
    let mut st = state.lock().unwrap();
    st.requests += 1;
    let bad = |st: &mut State, why: String| {
        st.violations
            .push(format!("{} {}: {why}", req.method, req.target));
        (400, Some(json!({"title": "Bad Request"})))
    };
    let Some(key) = req.header("salad-api-key") else {
        return bad(&mut st, "no Salad-Api-Key header".into());
    };
    if key != KEY {
        return (
            401,
            Some(json!({"title": "Unauthorized", "detail": "invalid API key"})),
        );
    }
    let group = format!("/api/public/organizations/{ORG}/projects/{PROJECT}/containers/{GROUP}");
    let Some(rest) = req.target.strip_prefix(&group) else {
        return (404, Some(json!({"title": "Not Found"})));
    };
    match (req.method.as_str(), rest) {
        ("GET", "") => (200, Some(group_json(&st))),
        ("PATCH", "") => {
            if req.header("content-type") != Some("application/merge-patch+json") {
                let ct = req.header("content-type").map(str::to_owned);
                return bad(&mut st, format!("content-type {ct:?}"));
            }
            let body: Option<Value> = serde_json::from_slice(&req.body).ok();
            let replicas = body
                .as_ref()
                .and_then(Value::as_object)
                .filter(|o| o.len() == 1)
                .and_then(|o| o.get("replicas")?.as_u64())
                .filter(|r| *r <= 500);
            match replicas {
                Some(r) => {
                    st.replicas = r as u32;
                    st.calls.push(format!("replicas={r}"));
                    (200, Some(group_json(&st)))
                }
                None => bad(
                    &mut st,
                    format!(
                        "not {{\"replicas\": 0..=500}}: {}",
                        String::from_utf8_lossy(&req.body)
                    ),
                ),
            }
        }
        ("POST", "/start" | "/stop") => {
            if !req.body.is_empty() {
                return bad(&mut st, "a body".into());
            }
            let verb = &rest[1..];
            st.status = if verb == "start" {
                "running"
            } else {
                "stopped"
            }
            .to_owned();
            st.calls.push(verb.to_owned());
            (202, None)
        }
        _ => (404, Some(json!({"title": "Not Found"}))),
    }
}
