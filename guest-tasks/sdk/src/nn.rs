//! Model inference run by the host (`wasi:nn`, world 0.3.0): ONNX models on the worker's CPU
//! or GPU, without the task getting the device, the filesystem or the network.
//!
//! A task loads a [`Graph`] — from one of its inputs ([`Graph::from_input`]: the model never
//! passes through the task's memory, and the worker keeps it loaded for the next job with the
//! same model) or from bytes ([`Graph::from_onnx`]) — makes a [`Context`], and runs
//! [`Context::compute`] on named [`Tensor`]s, getting the model's outputs back as tensors.
//!
//! What the host enforces (each is an [`Error`] the task can handle, with its [`ErrorKind`]):
//! host memory for graphs and tensors is capped per job and per worker
//! ([`ErrorKind::TooLarge`]; a task holding tensors over its cap traps); tensors must match
//! the model's inputs in type, dimensions and data length ([`ErrorKind::InvalidArgument`]);
//! a malformed model is [`ErrorKind::InvalidEncoding`]; a worker without ONNX Runtime answers
//! [`ErrorKind::UnsupportedOperation`]. Inference time counts against the job's wall-clock
//! limit (fuel does not see it) and is recorded as host compute time.
//!
//! ```ignore
//! use taskhost_guest::nn::{Graph, Tensor};
//!
//! let graph = Graph::from_input("model")?;
//! let ctx = graph.context()?;
//! let x = Tensor::f32(&[2, 4], &[0.1, 0.2, 0.3, 0.4, 1.0, 0.0, 0.5, 0.5])?;
//! let out = ctx.compute(&[("x", x)])?;
//! let probs: Vec<f32> = out.get("probs")?.to_f32()?;
//! ```

use std::fmt;

use crate::bindings::wasi::nn::{errors, graph, inference, tensor};

/// What a wasi-nn call failed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A tensor, a name or an argument does not fit the model.
    InvalidArgument,
    /// Not an ONNX model ONNX Runtime can load (malformed, truncated, or another format).
    InvalidEncoding,
    /// The operation timed out.
    Timeout,
    /// ONNX Runtime failed running the model.
    RuntimeError,
    /// The worker serves no inference (no ONNX Runtime), or not this type.
    UnsupportedOperation,
    /// Past the job's or the worker's host memory for graphs and tensors.
    TooLarge,
    /// No input of that name (or its object does not exist), or no output of that name.
    NotFound,
    /// Refused for security.
    Security,
    /// Anything else.
    Unknown,
}

/// A wasi-nn error: its kind and the host's message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    kind: ErrorKind,
    message: String,
}

impl Error {
    /// What failed.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The host's message.
    pub fn message(&self) -> &str {
        &self.message
    }

    fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error {
            kind,
            message: message.into(),
        }
    }

    fn from_raw(e: errors::Error) -> Error {
        use errors::ErrorCode as C;
        let kind = match e.code() {
            C::InvalidArgument => ErrorKind::InvalidArgument,
            C::InvalidEncoding => ErrorKind::InvalidEncoding,
            C::Timeout => ErrorKind::Timeout,
            C::RuntimeError => ErrorKind::RuntimeError,
            C::UnsupportedOperation => ErrorKind::UnsupportedOperation,
            C::TooLarge => ErrorKind::TooLarge,
            C::NotFound => ErrorKind::NotFound,
            C::Security => ErrorKind::Security,
            C::Unknown => ErrorKind::Unknown,
        };
        Error::new(kind, e.data())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "wasi-nn ({:?}): {}", self.kind, self.message)
    }
}

impl std::error::Error for Error {}

/// A tensor's element type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElementType {
    /// `f32`.
    F32,
    /// `f64`.
    F64,
    /// `u8`.
    U8,
    /// `i32`.
    I32,
    /// `i64`.
    I64,
    /// IEEE half or bfloat16: not served by the host, only seen.
    Other,
}

impl ElementType {
    fn size(self) -> usize {
        match self {
            ElementType::U8 => 1,
            ElementType::Other => 2,
            ElementType::F32 | ElementType::I32 => 4,
            ElementType::F64 | ElementType::I64 => 8,
        }
    }

    fn to_raw(self) -> tensor::TensorType {
        match self {
            ElementType::F32 => tensor::TensorType::Fp32,
            ElementType::F64 => tensor::TensorType::Fp64,
            ElementType::U8 => tensor::TensorType::U8,
            ElementType::I32 => tensor::TensorType::I32,
            ElementType::I64 => tensor::TensorType::I64,
            ElementType::Other => tensor::TensorType::Fp16,
        }
    }

    fn from_raw(t: tensor::TensorType) -> ElementType {
        match t {
            tensor::TensorType::Fp32 => ElementType::F32,
            tensor::TensorType::Fp64 => ElementType::F64,
            tensor::TensorType::U8 => ElementType::U8,
            tensor::TensorType::I32 => ElementType::I32,
            tensor::TensorType::I64 => ElementType::I64,
            tensor::TensorType::Fp16 | tensor::TensorType::Bf16 => ElementType::Other,
        }
    }
}

/// A tensor in the task's memory: dimensions (outermost first), element type and the
/// elements, little-endian and row-major. Handed to the host by [`Context::compute`].
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    dims: Vec<u32>,
    ty: ElementType,
    data: Vec<u8>,
}

macro_rules! typed {
    ($make:ident, $read:ident, $t:ty, $ty:expr) => {
        #[doc = concat!("A tensor of `", stringify!($t), "` elements; `Err` when `values` does not hold exactly as many elements as `dims` says.")]
        pub fn $make(dims: &[u32], values: &[$t]) -> Result<Tensor, Error> {
            Tensor::check(dims, values.len())?;
            Ok(Tensor {
                dims: dims.to_vec(),
                ty: $ty,
                data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            })
        }

        #[doc = concat!("The elements as `", stringify!($t), "`; `Err` for a tensor of another type.")]
        pub fn $read(&self) -> Result<Vec<$t>, Error> {
            if self.ty != $ty {
                return Err(Error::new(
                    ErrorKind::InvalidArgument,
                    format!("a tensor of {:?}, not {:?}", self.ty, $ty),
                ));
            }
            const N: usize = std::mem::size_of::<$t>();
            Ok(self
                .data
                .chunks_exact(N)
                .map(|c| <$t>::from_le_bytes(c.try_into().unwrap_or([0; N])))
                .collect())
        }
    };
}

impl Tensor {
    fn check(dims: &[u32], len: usize) -> Result<(), Error> {
        let n = dims
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d as usize));
        if n != Some(len) {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!("dimensions {dims:?} do not hold {len} elements"),
            ));
        }
        Ok(())
    }

    typed!(f32, to_f32, f32, ElementType::F32);
    typed!(f64, to_f64, f64, ElementType::F64);
    typed!(i32, to_i32, i32, ElementType::I32);
    typed!(i64, to_i64, i64, ElementType::I64);
    typed!(u8, to_u8, u8, ElementType::U8);

    /// A tensor from raw parts, unchecked here: the host traps the task when `data` is not
    /// exactly what `dims` and `ty` need or `dims` has more than 32 entries (the WIT
    /// constructor cannot fail), and checks it against the model (a mismatch is
    /// [`ErrorKind::InvalidArgument`] from [`Context::compute`]).
    pub fn from_raw_parts(dims: Vec<u32>, ty: ElementType, data: Vec<u8>) -> Tensor {
        Tensor { dims, ty, data }
    }

    /// Dimensions, outermost first.
    pub fn dims(&self) -> &[u32] {
        &self.dims
    }

    /// The element type.
    pub fn element_type(&self) -> ElementType {
        self.ty
    }

    /// The elements' bytes, little-endian, row-major.
    pub fn bytes(&self) -> &[u8] {
        &self.data
    }

    /// Elements in the tensor.
    pub fn len(&self) -> usize {
        self.data.len() / self.ty.size()
    }

    /// Whether it has no elements.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

/// A loaded model.
pub struct Graph {
    raw: graph::Graph,
}

impl Graph {
    /// Loads the ONNX model in the job's input `name` (the message's `"inputs"`): the host
    /// reads it, and keeps it loaded for later jobs with the same model (by its sha256).
    /// [`ErrorKind::NotFound`] when the job has no such input.
    pub fn from_input(name: &str) -> Result<Graph, Error> {
        graph::load_by_name(name)
            .map(|raw| Graph { raw })
            .map_err(Error::from_raw)
    }

    /// Loads an ONNX model from its bytes (they pass through the call: at most the host's
    /// per-call limit, 128 MiB; prefer [`Graph::from_input`]).
    pub fn from_onnx(bytes: &[u8]) -> Result<Graph, Error> {
        graph::load(
            &[bytes.to_vec()],
            graph::GraphEncoding::Onnx,
            graph::ExecutionTarget::Cpu,
        )
        .map(|raw| Graph { raw })
        .map_err(Error::from_raw)
    }

    /// A new execution context of this graph.
    pub fn context(&self) -> Result<Context, Error> {
        self.raw
            .init_execution_context()
            .map(|raw| Context { raw })
            .map_err(Error::from_raw)
    }
}

/// An execution context: runs its graph.
pub struct Context {
    raw: inference::GraphExecutionContext,
}

impl Context {
    /// Runs the graph on `inputs` (each named by the model's input name, or its index as a
    /// string), returning every output of the model. The tensors are copied to the host
    /// for the call and released after it.
    pub fn compute(&self, inputs: &[(&str, Tensor)]) -> Result<Outputs, Error> {
        let raw_inputs = inputs
            .iter()
            .map(|(name, t)| {
                (
                    (*name).to_owned(),
                    tensor::Tensor::new(&t.dims, t.ty.to_raw(), &t.data),
                )
            })
            .collect();
        let outputs = self.raw.compute(raw_inputs).map_err(Error::from_raw)?;
        Ok(Outputs(
            outputs
                .into_iter()
                .map(|(name, t)| {
                    let tensor = Tensor {
                        dims: t.dimensions(),
                        ty: ElementType::from_raw(t.ty()),
                        data: t.data(),
                    };
                    (name, tensor)
                })
                .collect(),
        ))
    }
}

/// A model's outputs, by name, in the model's order.
#[derive(Debug, Clone, PartialEq)]
pub struct Outputs(Vec<(String, Tensor)>);

impl Outputs {
    /// The output `name`; [`ErrorKind::NotFound`] when the model has none of that name.
    pub fn get(&self, name: &str) -> Result<&Tensor, Error> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t)
            .ok_or_else(|| Error::new(ErrorKind::NotFound, format!("no output `{name}`")))
    }

    /// Every output with its name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.0.iter().map(|(n, t)| (n.as_str(), t))
    }
}
