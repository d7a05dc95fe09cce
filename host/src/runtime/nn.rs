//! The host side of `wasi:nn` (world 0.3.0): thin adapters from the generated traits onto
//! [`crate::nn::NnJob`]. Graphs, contexts, tensors and errors live in the store's resource
//! table; a handle the guest forged or reused traps. `load-by-name` reads the model from the
//! job's input of that name, unless its key names a sha256 the worker has loaded.

use wasmtime::component::Resource;

use super::bindings::wasi::nn::{errors, graph, inference, tensor};
use super::host::HostState;
use crate::files::InputError;
use crate::inert::Inert;
use crate::nn::tensor::{ElementType, TensorData};
use crate::nn::{
    ContextHandle, ErrorCode, GraphHandle, ModelCharge, NnError, TensorHandle, quoted,
};

type NnResult<T> = wasmtime::Result<Result<T, Resource<NnError>>>;

fn to_element(t: tensor::TensorType) -> ElementType {
    use tensor::TensorType as T;
    match t {
        T::Fp16 => ElementType::F16,
        T::Fp32 => ElementType::F32,
        T::Fp64 => ElementType::F64,
        T::Bf16 => ElementType::Bf16,
        T::U8 => ElementType::U8,
        T::I32 => ElementType::I32,
        T::I64 => ElementType::I64,
    }
}

fn from_element(t: ElementType) -> tensor::TensorType {
    use tensor::TensorType as T;
    match t {
        ElementType::F16 => T::Fp16,
        ElementType::F32 => T::Fp32,
        ElementType::F64 => T::Fp64,
        ElementType::Bf16 => T::Bf16,
        ElementType::U8 => T::U8,
        ElementType::I32 => T::I32,
        ElementType::I64 => T::I64,
    }
}

impl HostState {
    /// `r`'s error as a resource the task owns.
    fn nn_result<T>(&mut self, r: Result<T, NnError>) -> NnResult<T> {
        match r {
            Ok(v) => Ok(Ok(v)),
            Err(e) => {
                tracing::debug!(job = %self.job, code = ?e.code, error = %Inert(&e.message), "wasi-nn error");
                Ok(Err(self.table.push(e)?))
            }
        }
    }

    fn push_graph(&mut self, r: Result<GraphHandle, NnError>) -> NnResult<Resource<GraphHandle>> {
        match r {
            Ok(g) => Ok(Ok(self.table.push(g)?)),
            Err(e) => self.nn_result(Err(e)),
        }
    }

    /// The whole input `name`, for a model (at most what the job could load), with its
    /// charges: taken for the size the store gives before any of it is read, so a model the
    /// job or the worker has no room for is `too-large` without being read.
    async fn model_input(&mut self, name: &str) -> Result<(Vec<u8>, ModelCharge), NnError> {
        let max = self.nn.max_model_bytes();
        let _waiting = self.files.store_wait.start();
        let inputs = &self.files.inputs;
        let size = inputs.size(name).await.map_err(|e| input_error(e, max))?;
        if size > max {
            return Err(input_error(InputError::LimitReached(size), max));
        }
        let charged = self.nn.charge_model(size)?;
        // At most `size` bytes are read (the size checked is the one the store gave).
        let bytes = inputs
            .read_whole(name, size)
            .await
            .map_err(|e| input_error(e, max))?;
        Ok((bytes, charged))
    }
}

/// The wasi-nn error of a failed read of a model's input (a job whose cap allows models of
/// `max` bytes). A name is quoted short ([`quoted`]): errors stay in the task's table.
fn input_error(e: InputError, max: u64) -> NnError {
    match e {
        InputError::NoSuchInput(n) => NnError::new(
            ErrorCode::NotFound,
            format!("the job has no input {}", quoted(&n)),
        ),
        InputError::Missing(n) => NnError::new(
            ErrorCode::NotFound,
            format!("the object of input {} does not exist", quoted(&n)),
        ),
        InputError::LimitReached(size) => NnError::new(
            ErrorCode::TooLarge,
            format!(
                "the model is {size} bytes, over the {max} bytes the job's wasi-nn memory cap \
                 allows"
            ),
        ),
        InputError::Storage(m) => NnError::new(ErrorCode::RuntimeError, m),
    }
}

impl graph::Host for HostState {
    async fn load(
        &mut self,
        builders: Vec<graph::GraphBuilder>,
        encoding: graph::GraphEncoding,
        _target: graph::ExecutionTarget,
    ) -> NnResult<Resource<GraphHandle>> {
        let r = match (encoding, <[_; 1]>::try_from(builders)) {
            (graph::GraphEncoding::Onnx, Ok([bytes])) => self.nn.load(bytes, None, None).await,
            (graph::GraphEncoding::Onnx, Err(b)) => Err(NnError::new(
                ErrorCode::InvalidArgument,
                format!("an ONNX graph is one builder, not {}", b.len()),
            )),
            (other, _) => Err(NnError::new(
                ErrorCode::InvalidEncoding,
                format!("this host runs ONNX graphs only, not {other:?}"),
            )),
        };
        self.push_graph(r)
    }

    /// A model whose key names its sha256 (`inputs/<sha256>`) and that the worker has loaded
    /// is not read at all; any other is read whole and hashed (and must have the sha256 its
    /// key names).
    async fn load_by_name(&mut self, name: String) -> NnResult<Resource<GraphHandle>> {
        let named = self.files.inputs.named_sha256(&name);
        let r = match self.nn.served() {
            Err(e) => Err(e),
            Ok(()) => match named.and_then(|h| self.nn.load_cached(&h)) {
                Some(hit) => hit,
                None => match self.model_input(&name).await {
                    Ok((bytes, charged)) => self.nn.load(bytes, named, Some(charged)).await,
                    Err(e) => Err(e),
                },
            },
        };
        self.push_graph(r)
    }
}

impl graph::HostGraph for HostState {
    async fn init_execution_context(
        &mut self,
        this: Resource<GraphHandle>,
    ) -> NnResult<Resource<ContextHandle>> {
        let ctx = self.table.get(&this)?.context();
        Ok(Ok(self.table.push(ctx)?))
    }

    async fn drop(&mut self, this: Resource<GraphHandle>) -> wasmtime::Result<()> {
        self.table.delete(this)?;
        Ok(())
    }
}

impl inference::Host for HostState {}

impl inference::HostGraphExecutionContext for HostState {
    async fn compute(
        &mut self,
        this: Resource<ContextHandle>,
        inputs: Vec<inference::NamedTensor>,
    ) -> NnResult<Vec<inference::NamedTensor>> {
        let graph = self.table.get(&this)?.graph().clone();
        let mut tensors = Vec::with_capacity(inputs.len());
        for (name, t) in inputs {
            tensors.push((name, self.table.delete(t)?));
        }
        let r = self.nn.compute(graph, tensors).await;
        let outputs = match self.nn_result(r)? {
            Ok(outputs) => outputs,
            Err(e) => return Ok(Err(e)),
        };
        let mut out = Vec::with_capacity(outputs.len());
        for (name, t) in outputs {
            out.push((name, self.table.push(t)?));
        }
        Ok(Ok(out))
    }

    async fn drop(&mut self, this: Resource<ContextHandle>) -> wasmtime::Result<()> {
        self.table.delete(this)?;
        Ok(())
    }
}

impl tensor::Host for HostState {}

impl tensor::HostTensor for HostState {
    fn new(
        &mut self,
        dimensions: tensor::TensorDimensions,
        ty: tensor::TensorType,
        data: tensor::TensorData,
    ) -> wasmtime::Result<Resource<TensorHandle>> {
        let t = TensorData {
            dims: dimensions,
            ty: to_element(ty),
            data: data.into(),
        };
        let handle = self.nn.tensor(t).map_err(wasmtime::Error::msg)?;
        Ok(self.table.push(handle)?)
    }

    fn dimensions(&mut self, this: Resource<TensorHandle>) -> wasmtime::Result<Vec<u32>> {
        Ok(self.table.get(&this)?.tensor.dims.clone())
    }

    fn ty(&mut self, this: Resource<TensorHandle>) -> wasmtime::Result<tensor::TensorType> {
        Ok(from_element(self.table.get(&this)?.tensor.ty))
    }

    /// The tensor's bytes, copied for the task: refused (a trap: the WIT function cannot
    /// fail) when they are more than the task's memory limit could ever take, and charged to
    /// the job and the worker while the copy is made (a trap past either cap).
    fn data(&mut self, this: Resource<TensorHandle>) -> wasmtime::Result<Vec<u8>> {
        let data = &self.table.get(&this)?.tensor.data;
        let len = data.len() as u64;
        let limit = self.limiter.limit() as u64;
        if len > limit {
            wasmtime::bail!(
                "wasi-nn tensor data: {len} bytes, more than the task's memory limit of {limit} \
                 bytes could take"
            );
        }
        let _copy = self.nn.charge_copy(len).map_err(wasmtime::Error::msg)?;
        Ok(data.as_slice().to_vec())
    }

    fn drop(&mut self, this: Resource<TensorHandle>) -> wasmtime::Result<()> {
        self.table.delete(this)?;
        Ok(())
    }
}

impl errors::Host for HostState {}

impl errors::HostError for HostState {
    fn code(&mut self, this: Resource<NnError>) -> wasmtime::Result<errors::ErrorCode> {
        use errors::ErrorCode as C;
        Ok(match self.table.get(&this)?.code {
            ErrorCode::InvalidArgument => C::InvalidArgument,
            ErrorCode::InvalidEncoding => C::InvalidEncoding,
            ErrorCode::RuntimeError => C::RuntimeError,
            ErrorCode::UnsupportedOperation => C::UnsupportedOperation,
            ErrorCode::TooLarge => C::TooLarge,
            ErrorCode::NotFound => C::NotFound,
        })
    }

    fn data(&mut self, this: Resource<NnError>) -> wasmtime::Result<String> {
        // At most MAX_MESSAGE_BYTES: the copy is small.
        Ok(self.table.get(&this)?.message.clone())
    }

    fn drop(&mut self, this: Resource<NnError>) -> wasmtime::Result<()> {
        self.table.delete(this)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A name the task passed is never echoed at length: a wasi-nn error stays in the task's
    /// resource table until it drops it, so 1 MiB names would keep 1 MiB each.
    #[test]
    fn a_tasks_long_input_name_is_quoted_short() {
        let name = "m".repeat(1 << 20);
        for e in [
            InputError::NoSuchInput(name.clone()),
            InputError::Missing(name.clone()),
        ] {
            let e = input_error(e, 1 << 30);
            assert_eq!(e.code, ErrorCode::NotFound);
            assert!(e.message.len() < 512, "{} bytes", e.message.len());
            assert!(e.message.contains("`mmm"), "{}", e.message);
        }
    }
}
