//! `nn_probe.wasm`: one graph load and one inference through `taskhost_guest::nn`, with
//! whatever the job asks for, reporting what the host answered. The wasi-nn tests use it for
//! the failure paths (no ONNX Runtime, malformed models, hostile tensors, memory caps) and for
//! the graph cache.
//!
//! Input: `{"inputs": {"model": KEY}, "dims": [..], "data_bytes": N, "type": "f32"|"i64",
//! "input": "x"}`: loads the graph from input `model`, then (when `dims` is given) makes a
//! tensor of those dimensions and type holding `data_bytes` bytes (default: what f32 elements
//! of the dimensions need; element i is i/8 as an f32), and computes with it under the name
//! `input`, `"repeat"` times (default 1: the benchmark's loop). `"model"`: the input to load
//! the graph from instead of `model`; `"first"`: an input whose graph is loaded (and held)
//! before it; with `"first_context": true` only an execution context of that first graph is
//! held, its graph dropped.
//!
//! Output: `{"stage": "load"|"compute"|"done", "kind": .., "message": ..}` when a call failed
//! (`kind`: the error kind, e.g. `TooLarge`), else `{"stage": "done", "outputs": {NAME:
//! {"dims": [..], "f32": [..]}}}` (`f32` only for f32 outputs of at most 1024 values).

use serde::Deserialize;
use serde_json::{Value, json};
use taskhost_guest::nn::{ElementType, Graph, Tensor};
use taskhost_guest::{Error, Task};

/// Output values given back in the result, per output, at most.
const MAX_VALUES: usize = 1024;

/// The job document.
#[derive(Deserialize)]
struct Input {
    dims: Option<Vec<u32>>,
    data_bytes: Option<usize>,
    #[serde(rename = "type")]
    ty: Option<String>,
    input: Option<String>,
    repeat: Option<u32>,
    model: Option<String>,
    first: Option<String>,
    first_context: Option<bool>,
}

fn failed(stage: &str, e: &taskhost_guest::nn::Error) -> Value {
    json!({"stage": stage, "kind": format!("{:?}", e.kind()), "message": e.message()})
}

struct Probe;

impl Task for Probe {
    type Input = Input;
    type Output = Value;

    fn run(input: Input) -> Result<Value, Error> {
        let first = match input.first.as_deref().map(Graph::from_input) {
            None => None,
            Some(Ok(g)) => Some(g),
            Some(Err(e)) => return Ok(failed("first", &e)),
        };
        // The first graph held as itself, or only as an execution context of it.
        let _first = match first {
            Some(g) if input.first_context == Some(true) => match g.context() {
                Ok(c) => (None, Some(c)),
                Err(e) => return Ok(failed("first", &e)),
            },
            other => (other, None),
        };
        let graph = match Graph::from_input(input.model.as_deref().unwrap_or("model")) {
            Ok(g) => g,
            Err(e) => return Ok(failed("load", &e)),
        };
        let ctx = match graph.context() {
            Ok(c) => c,
            Err(e) => return Ok(failed("load", &e)),
        };
        let Some(dims) = input.dims else {
            return Ok(json!({"stage": "done"}));
        };
        let ty = match input.ty.as_deref() {
            None | Some("f32") => ElementType::F32,
            Some("i64") => ElementType::I64,
            Some(other) => taskhost_guest::bail!("unknown type {other}"),
        };
        let need = dims
            .iter()
            .try_fold(4usize, |n, &d| n.checked_mul(d as usize))
            .unwrap_or(0);
        let len = input.data_bytes.unwrap_or(need);
        let data: Vec<u8> = (0..len / 4)
            .flat_map(|i| (i as f32 / 8.0).to_le_bytes())
            .chain(std::iter::repeat_n(0, len % 4))
            .collect();
        let name = input.input.unwrap_or_else(|| "x".to_owned());
        // Made once: each repeat hands the host the same tensor, as the benchmark's native
        // twin does.
        let inputs = [(name.as_str(), Tensor::from_raw_parts(dims, ty, data))];
        let mut outputs = None;
        for _ in 0..input.repeat.unwrap_or(1).max(1) {
            match ctx.compute(&inputs) {
                Ok(o) => outputs = Some(o),
                Err(e) => return Ok(failed("compute", &e)),
            }
        }
        let Some(outputs) = outputs else {
            taskhost_guest::bail!("no compute ran");
        };
        let mut doc = serde_json::Map::new();
        for (name, t) in outputs.iter() {
            let mut o = json!({"dims": t.dims()});
            // The values of small outputs (a result document is at most 1 MiB).
            if let Ok(v) = t.to_f32()
                && v.len() <= MAX_VALUES
            {
                o["f32"] = json!(v);
            }
            doc.insert(name.to_owned(), o);
        }
        Ok(json!({"stage": "done", "outputs": doc}))
    }
}

taskhost_guest::export_task!(Probe);
