//! One run's inference: its graphs, tensors and contexts (each holding its bytes of the job's
//! and the worker's budgets), graph loads through the cache, and inference on the run's
//! inference thread ([`super::thread`]), timed and terminated if the run is stopped.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::budget::{Budget, Charge};
use super::cache::{LoadedGraph, ModelHash};
use super::engine::RunError;
use super::tensor::{TensorData, check_input, check_tensor, input_copies};
use super::thread::{InferenceThread, Panicked};
use super::{ErrorCode, GRAPH_COST_FACTOR, NnError, NnService, quoted};

/// A graph a task holds: the loaded graph and its cost in the job's budget.
pub struct GraphHandle {
    held: Arc<HeldGraph>,
}

/// An execution context: the graph it runs (inputs are given to each `compute`). It holds
/// the graph as its graph resource does, so the job is charged for the graph until the last
/// of them is dropped: a task that drops a graph and keeps a context of it is charged all
/// the same.
pub struct ContextHandle {
    held: Arc<HeldGraph>,
}

/// A loaded graph with its cost in the job's budget, shared by the task's graph resource and
/// its execution contexts.
struct HeldGraph {
    graph: Arc<LoadedGraph>,
    _job: Charge,
}

impl GraphHandle {
    fn new(graph: Arc<LoadedGraph>, job: Charge) -> GraphHandle {
        GraphHandle {
            held: Arc::new(HeldGraph { graph, _job: job }),
        }
    }
}

impl ContextHandle {
    /// The graph this context runs.
    pub fn graph(&self) -> &Arc<LoadedGraph> {
        &self.held.graph
    }
}

/// A tensor a task holds, its bytes charged to the job and the worker.
pub struct TensorHandle {
    /// Dimensions, type and bytes.
    pub tensor: TensorData,
    charges: (Charge, Charge),
}

/// The job's and the worker's charges for a model about to be read (its graph's cost, taken
/// before a byte of it is read): [`NnJob::load`] makes them the graph's own, or gives them
/// back on an error.
pub struct ModelCharge {
    job: Charge,
    worker: Charge,
}

/// The job's and the worker's charges for a copy of bytes the host makes for the task (a
/// tensor's data handed back): held while the copy lives.
pub struct CopyCharge {
    _job: Charge,
    _worker: Charge,
}

/// One run's inference state.
pub struct NnJob {
    service: Arc<NnService>,
    budget: Arc<Budget>,
    compute: Duration,
    /// The run's inference thread once it needed one; out of it while a call runs, so a run
    /// stopped mid-call never hands a busy thread back to the worker.
    thread: Option<InferenceThread>,
    /// Run options for the next inference (reused until one is stopped).
    stop: Option<Arc<ort::session::RunOptions>>,
}

fn too_large_for_job(cap: u64, need: u64, held: u64) -> NnError {
    NnError::new(
        ErrorCode::TooLarge,
        format!(
            "over the job's wasi-nn memory cap of {cap} bytes: {need} more bytes needed, \
             {held} held (drop graphs and tensors no longer used, or ask for a smaller batch)"
        ),
    )
}

fn too_large_for_worker(cap: u64, need: u64) -> NnError {
    NnError::new(
        ErrorCode::TooLarge,
        format!(
            "over the worker's wasi-nn memory of {cap} bytes (shared by its jobs): {need} more \
             bytes needed; the job may succeed on a later run"
        ),
    )
}

impl NnJob {
    pub(super) fn new(service: Arc<NnService>) -> NnJob {
        let budget = Budget::new(service.config.job_memory);
        NnJob {
            service,
            budget,
            compute: Duration::ZERO,
            thread: None,
            stop: None,
        }
    }

    /// `f`'s result, run on the run's inference thread (taken from the worker's idle ones, or
    /// made, at its first call), its time added to [`NnJob::compute_time`]. If the run stops
    /// while `f` runs, the thread is not kept: it ends once `f` returns.
    async fn on_thread<T: Send + 'static>(
        &mut self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, NnError> {
        let thread = match self.thread.take() {
            Some(t) => t,
            None => self
                .service
                .threads
                .take()
                .map_err(|e| NnError::new(ErrorCode::RuntimeError, e.to_string()))?,
        };
        let started = Instant::now();
        let r = thread.run(f).await;
        self.compute += started.elapsed();
        self.thread = Some(thread);
        r.map_err(|Panicked| {
            NnError::new(
                ErrorCode::RuntimeError,
                "ONNX Runtime failed inside the host (the worker's log says why)",
            )
        })
    }

    /// [`NnJob::on_thread`] holding `held` (the charges of the memory `f` uses) until `f`'s
    /// call ends, and giving it back with `f`'s result. If the run stops while `f` runs, `held`
    /// is dropped on the thread once `f` returns, not with the waiting future: the budgets
    /// count the memory for as long as the call really uses it.
    async fn on_thread_holding<T: Send + 'static, H: Send + 'static>(
        &mut self,
        held: H,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<(T, H), NnError> {
        self.on_thread(move || (f(), held)).await
    }

    /// Time spent in inference and graph loads in this run (host compute that fuel does not
    /// see).
    pub fn compute_time(&self) -> Duration {
        self.compute
    }

    /// Bytes the job holds now.
    pub fn held(&self) -> u64 {
        self.budget.used()
    }

    /// The most bytes of a model the job could load (the job's cap over the cost factor).
    pub fn max_model_bytes(&self) -> u64 {
        self.budget.cap() / GRAPH_COST_FACTOR
    }

    /// `bytes` of both budgets, or the error saying which cap it passes.
    fn charge(&self, bytes: u64) -> Result<(Charge, Charge), NnError> {
        let job = self
            .budget
            .charge(bytes)
            .ok_or_else(|| too_large_for_job(self.budget.cap(), bytes, self.budget.used()))?;
        let worker = self.worker_charge(bytes)?;
        Ok((job, worker))
    }

    /// `bytes` of the worker's budget, evicting idle cached graphs to make room.
    fn worker_charge(&self, bytes: u64) -> Result<Charge, NnError> {
        let worker = &self.service.worker;
        loop {
            if let Some(c) = worker.charge(bytes) {
                return Ok(c);
            }
            if !self.service.cache.evict_idle() {
                return Err(too_large_for_worker(worker.cap(), bytes));
            }
        }
    }

    /// `Ok` when the worker serves inference, else the `unsupported-operation` error a load
    /// gets (checked before a model is read).
    pub fn served(&self) -> Result<(), NnError> {
        let unserved = match (&self.service.unserved, self.service.ort.get()) {
            (Some(m), _) | (None, Some(Err(m))) => m,
            _ => return Ok(()),
        };
        Err(NnError::new(
            ErrorCode::UnsupportedOperation,
            unserved.clone(),
        ))
    }

    /// A tensor of the task's, charged to the job and the worker for what it holds (data and
    /// dimensions); `Err` (a message for the trap that ends the run: the WIT constructor
    /// cannot fail) past either cap, or when it is no tensor ([`check_tensor`]: too many
    /// dimensions, data of another length than they need). Nothing is kept on an `Err`.
    pub fn tensor(&self, tensor: TensorData) -> Result<TensorHandle, String> {
        check_tensor(&tensor).map_err(|m| format!("wasi-nn tensor: {m}"))?;
        let charges = self
            .charge(tensor.held_bytes())
            .map_err(|e| format!("wasi-nn tensor: {}", e.message))?;
        Ok(TensorHandle { tensor, charges })
    }

    /// `bytes` of both budgets for a copy the host makes for the task while a call lasts (a
    /// tensor's data handed back); `Err` (a message for a trap) past either cap.
    pub fn charge_copy(&self, bytes: u64) -> Result<CopyCharge, String> {
        let (job, worker) = self
            .charge(bytes)
            .map_err(|e| format!("wasi-nn tensor data: {}", e.message))?;
        Ok(CopyCharge {
            _job: job,
            _worker: worker,
        })
    }

    /// The charges for a model of `size` bytes about to be read: its graph's cost
    /// ([`GRAPH_COST_FACTOR`] × `size`) of the job's and the worker's budgets, taken before any
    /// of it is read (`too-large` past either cap). Give them to [`NnJob::load`].
    pub fn charge_model(&self, size: u64) -> Result<ModelCharge, NnError> {
        let (job, worker) = self.charge(size.saturating_mul(GRAPH_COST_FACTOR))?;
        Ok(ModelCharge { job, worker })
    }

    /// The graph of the model whose sha256 is `hash`, if the worker has it loaded: a load
    /// that needs none of the model's bytes, charged to the job like any other. `None`: not
    /// loaded (read the model and [`NnJob::load`] it).
    pub fn load_cached(&mut self, hash: &ModelHash) -> Option<Result<GraphHandle, NnError>> {
        let graph = self.service.cache.get(hash)?;
        Some(self.hit(graph))
    }

    /// A cached `graph` for the task, charged to the job.
    fn hit(&mut self, graph: Arc<LoadedGraph>) -> Result<GraphHandle, NnError> {
        let job = self
            .budget
            .charge(graph.cost)
            .ok_or_else(|| too_large_for_job(self.budget.cap(), graph.cost, self.budget.used()))?;
        self.service.hits.fetch_add(1, Ordering::Relaxed);
        Ok(GraphHandle::new(graph, job))
    }

    /// The graph of the ONNX model `bytes`: from the worker's cache when a job loaded the
    /// same model (by sha256) before, else built by ONNX Runtime and cached (the worker's
    /// first build loads ONNX Runtime itself). `expected`: the sha256 the model's key names
    /// (a content-addressed input); bytes of another sha256 are an `invalid-argument` error.
    /// `charged`: the model's charges when they were taken before it was read
    /// ([`NnJob::charge_model`]); they become the graph's, or are given back (a cache hit is
    /// charged the cached graph's cost instead). `None`: the bytes are the task's argument,
    /// charged once they are known to need a build. The model is hashed on the run's
    /// inference thread (hundreds of MiB take a good part of a second), never the async one.
    pub async fn load(
        &mut self,
        bytes: Vec<u8>,
        expected: Option<ModelHash>,
        charged: Option<ModelCharge>,
    ) -> Result<GraphHandle, NnError> {
        self.served()?;
        // The charges stay held while the thread hashes, even past a stopped run.
        let ((hash, bytes), charged) = self
            .on_thread_holding(charged, move || {
                let hash: ModelHash = Sha256::digest(&bytes).into();
                (hash, bytes)
            })
            .await?;
        if expected.is_some_and(|e| e != hash) {
            return Err(NnError::new(
                ErrorCode::InvalidArgument,
                "the model's bytes are not those its key names: their sha256 differs",
            ));
        }
        if let Some(graph) = self.service.cache.get(&hash) {
            drop(charged);
            return self.hit(graph);
        }
        let (cost, job, worker) = match charged {
            // Taken for the size the store gave: at least the bytes read.
            Some(ModelCharge { job, worker }) => (job.bytes(), job, worker),
            None => {
                let cost = (bytes.len() as u64).saturating_mul(GRAPH_COST_FACTOR);
                let job = self.budget.charge(cost).ok_or_else(|| {
                    too_large_for_job(self.budget.cap(), cost, self.budget.used())
                })?;
                (cost, job, self.worker_charge(cost)?)
            }
        };
        let service = self.service.clone();
        // The charges stay held while ONNX Runtime builds, even past a stopped run.
        let (model, (job, worker)) = self
            .on_thread_holding((job, worker), move || {
                let ort = service
                    .ort()
                    .map_err(|m| NnError::new(ErrorCode::UnsupportedOperation, m))?;
                ort.build(&bytes)
                    .map_err(|m| NnError::new(ErrorCode::InvalidEncoding, m))
            })
            .await?;
        let model = model?;
        self.service.built.fetch_add(1, Ordering::Relaxed);
        let graph = Arc::new(LoadedGraph {
            hash,
            model,
            cost,
            _worker: worker,
        });
        self.service.cache.insert(graph.clone());
        Ok(GraphHandle::new(graph, job))
    }

    /// Runs `graph` on `inputs` (each named by the graph input's name or its index), giving
    /// every output as a tensor charged to the job. Its time is added to
    /// [`NnJob::compute_time`]; if the run is stopped while it computes, ONNX Runtime is told to
    /// terminate.
    pub async fn compute(
        &mut self,
        graph: Arc<LoadedGraph>,
        inputs: Vec<(String, TensorHandle)>,
    ) -> Result<Vec<(String, TensorHandle)>, NnError> {
        let invalid = |m: String| NnError::new(ErrorCode::InvalidArgument, m);
        let declared = &graph.model.inputs;
        let mut slots: Vec<Option<TensorHandle>> = (0..declared.len()).map(|_| None).collect();
        for (name, t) in inputs {
            let i = declared
                .iter()
                .position(|o| o.name == name)
                .or_else(|| name.parse::<usize>().ok().filter(|&i| i < declared.len()))
                .ok_or_else(|| invalid(format!("the graph has no input {}", quoted(&name))))?;
            check_input(&declared[i], &t.tensor).map_err(invalid)?;
            if slots[i].replace(t).is_some() {
                return Err(invalid(format!(
                    "input {} given twice",
                    quoted(&declared[i].name)
                )));
            }
        }
        let mut tensors = Vec::with_capacity(slots.len());
        for (o, slot) in declared.iter().zip(slots) {
            tensors.push(
                slot.ok_or_else(|| invalid(format!("input {} is missing", quoted(&o.name))))?,
            );
        }
        // ONNX Runtime reads the inputs' bytes in place; a copy is made (and held while it
        // runs) only of bytes that cannot be viewed as their elements.
        let copy: u64 = tensors
            .iter()
            .filter(|t| input_copies(&t.tensor))
            .map(|t| t.tensor.data.len() as u64)
            .sum();
        let copy_charge = self.charge(copy)?;
        let room = (self.budget.cap() - self.budget.used().min(self.budget.cap())).min(
            self.service.worker.cap() - self.service.worker.used().min(self.service.worker.cap()),
        );
        let stop = match self.stop.take() {
            Some(stop) => stop,
            None => Arc::new(ort::session::RunOptions::new().map_err(|e| {
                NnError::new(ErrorCode::RuntimeError, format!("ONNX Runtime: {e}"))
            })?),
        };
        let mut guard = Terminate(Some(stop.clone()));
        // The inputs' own bytes and their copies stay charged until the inference ends, even
        // past a stopped run.
        let (data, held): (Vec<TensorData>, Vec<_>) =
            tensors.into_iter().map(|t| (t.tensor, t.charges)).unzip();
        let ran = self
            .on_thread_holding((copy_charge, held), move || {
                graph.model.run(&data, room, &stop)
            })
            .await;
        // Not stopped: the options are reused by the next inference.
        self.stop = guard.0.take();
        let (ran, held) = ran?;
        drop(held);
        let outputs = match ran {
            Ok(outputs) => outputs,
            Err(RunError::TooLarge(n)) => {
                return Err(too_large_for_job(self.budget.cap(), n, self.budget.used()));
            }
            Err(RunError::Failed(m)) => return Err(NnError::new(ErrorCode::RuntimeError, m)),
        };
        let mut out = Vec::with_capacity(outputs.len());
        for (name, t) in outputs {
            let charges = self.charge(t.held_bytes())?;
            out.push((name, TensorHandle { tensor: t, charges }));
        }
        Ok(out)
    }
}

impl Drop for NnJob {
    /// Hands the run's inference thread (idle: a call in progress took it) to the worker.
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            self.service.threads.give_back(t);
        }
    }
}

/// Terminates an inference whose waiting future was dropped (the run stopped) unless
/// disarmed (`None`) when the inference ended.
struct Terminate(Option<Arc<ort::session::RunOptions>>);

impl Drop for Terminate {
    fn drop(&mut self) {
        if let Some(stop) = &self.0 {
            let _ = stop.terminate();
        }
    }
}

impl GraphHandle {
    /// A new execution context of this graph.
    pub fn context(&self) -> ContextHandle {
        ContextHandle {
            held: self.held.clone(),
        }
    }
}

#[cfg(test)]
mod tests;
