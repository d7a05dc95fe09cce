//! Tensors as the task hands them to the host and gets them back: checked against the graph's
//! inputs before ONNX Runtime sees them, and read out of its outputs within a byte budget.
//! Every size is computed with checked arithmetic: no dimensions a task can pass make the host
//! panic, overflow or allocate past its budget.

use ort::session::SessionInputValue;
use ort::value::{DynValue, Tensor, TensorElementType, TensorRef, ValueType};

use super::{MAX_TENSOR_RANK, quoted};

/// A tensor's element type (the WIT `tensor-type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElementType {
    /// IEEE half (not served: no conversion without the `half` crate).
    F16,
    /// IEEE single.
    F32,
    /// IEEE double.
    F64,
    /// bfloat16 (not served).
    Bf16,
    /// Unsigned byte.
    U8,
    /// 32-bit signed integer.
    I32,
    /// 64-bit signed integer.
    I64,
}

impl ElementType {
    /// Bytes per element.
    pub fn size(self) -> u64 {
        match self {
            ElementType::U8 => 1,
            ElementType::F16 | ElementType::Bf16 => 2,
            ElementType::F32 | ElementType::I32 => 4,
            ElementType::F64 | ElementType::I64 => 8,
        }
    }

    fn of_onnx(t: TensorElementType) -> Option<ElementType> {
        Some(match t {
            TensorElementType::Float32 => ElementType::F32,
            TensorElementType::Float64 => ElementType::F64,
            TensorElementType::Float16 => ElementType::F16,
            TensorElementType::Bfloat16 => ElementType::Bf16,
            TensorElementType::Uint8 => ElementType::U8,
            TensorElementType::Int32 => ElementType::I32,
            TensorElementType::Int64 => ElementType::I64,
            _ => return None,
        })
    }
}

/// A tensor's dimensions, type and little-endian row-major bytes.
#[derive(Debug)]
pub struct TensorData {
    /// Dimensions, outermost first.
    pub dims: Vec<u32>,
    /// Element type.
    pub ty: ElementType,
    /// The elements, little-endian, row-major.
    pub data: Bytes,
}

/// A tensor's bytes: the task's, as they came out of its memory, or an output where ONNX
/// Runtime wrote it (read out only when the task asks for them: no copy in between).
pub enum Bytes {
    /// Bytes the task passed.
    Task(Vec<u8>),
    /// An output tensor of a type the host serves, in ONNX Runtime's buffer, and its length
    /// in bytes (known when it was read out: asking ONNX Runtime again costs calls).
    Output(DynValue, usize),
}

impl Bytes {
    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Task(v) => v,
            Bytes::Output(v, _) => output_bytes(v).unwrap_or_default(),
        }
    }

    /// How many bytes.
    pub fn len(&self) -> usize {
        match self {
            Bytes::Task(v) => v.len(),
            Bytes::Output(_, len) => *len,
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl TensorData {
    /// Host memory the tensor holds, in bytes: its data and its dimensions (what it is
    /// charged).
    pub fn held_bytes(&self) -> u64 {
        (self.data.len() as u64).saturating_add(4 * self.dims.len() as u64)
    }
}

impl From<Vec<u8>> for Bytes {
    fn from(v: Vec<u8>) -> Bytes {
        Bytes::Task(v)
    }
}

impl std::fmt::Debug for Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} bytes", self.len())
    }
}

/// The bytes of an output tensor of a served type, in ONNX Runtime's buffer (`None` for any
/// other value). Viewing elements as bytes needs no alignment.
fn output_bytes(v: &DynValue) -> Option<&[u8]> {
    let ValueType::Tensor { ty, .. } = v.dtype() else {
        return None;
    };
    fn view<T: ort::value::PrimitiveTensorElementType + bytemuck::Pod>(
        v: &DynValue,
    ) -> Option<&[u8]> {
        v.try_extract_tensor::<T>()
            .ok()
            .map(|(_, data)| bytemuck::cast_slice(data))
    }
    match ElementType::of_onnx(*ty)? {
        ElementType::F32 => view::<f32>(v),
        ElementType::F64 => view::<f64>(v),
        ElementType::U8 => view::<u8>(v),
        ElementType::I32 => view::<i32>(v),
        ElementType::I64 => view::<i64>(v),
        ElementType::F16 | ElementType::Bf16 => None,
    }
}

/// One input or output of a graph, as the model declares it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outlet {
    /// Its name in the model.
    pub name: String,
    /// Dimensions; -1 for a dynamic one (any size).
    pub dims: Vec<i64>,
    /// Its element type; `None` for a type or kind the host does not serve (strings,
    /// sequences, maps...).
    pub ty: Option<ElementType>,
}

impl Outlet {
    /// The outlet of a session input or output.
    pub fn of(o: &ort::value::Outlet) -> Outlet {
        let (dims, ty) = match o.dtype() {
            ValueType::Tensor { ty, shape, .. } => (shape.to_vec(), ElementType::of_onnx(*ty)),
            _ => (Vec::new(), None),
        };
        Outlet {
            name: o.name().to_owned(),
            dims,
            ty,
        }
    }
}

/// Elements in a tensor of `dims`, or `None` past `u64`.
pub fn elements(dims: &[u32]) -> Option<u64> {
    dims.iter()
        .try_fold(1u64, |n, &d| n.checked_mul(u64::from(d)))
}

/// Why `t` is no tensor at all (`Err(message)`), else `Ok`: more than [`MAX_TENSOR_RANK`]
/// dimensions, or data of another length than its dimensions and element type need (checked
/// arithmetic: dimensions whose product passes `u64` never match). Checked when the task makes
/// it, before it is charged or kept, and again before ONNX Runtime sees it.
pub fn check_tensor(t: &TensorData) -> Result<(), String> {
    if t.dims.len() > MAX_TENSOR_RANK {
        return Err(format!(
            "a tensor has at most {MAX_TENSOR_RANK} dimensions, not {}",
            t.dims.len()
        ));
    }
    let want = elements(&t.dims).and_then(|n| n.checked_mul(t.ty.size()));
    if want != Some(t.data.len() as u64) {
        return Err(format!(
            "a tensor of dimensions {} and type {:?} has {} bytes of data, not {}",
            shown(&t.dims),
            t.ty,
            t.data.len(),
            want.map_or_else(|| "a number that fits".to_owned(), |n| n.to_string())
        ));
    }
    Ok(())
}

/// Dimensions shown in a message: the first few, then how many in all (a model may declare
/// any number).
fn shown<T: std::fmt::Debug>(dims: &[T]) -> String {
    const SHOWN: usize = 8;
    if dims.len() <= SHOWN {
        format!("{dims:?}")
    } else {
        format!("{:?} (first {SHOWN} of {})", &dims[..SHOWN], dims.len())
    }
}

/// Why `t` cannot be the graph input `o` (`Err(message)`), else `Ok`.
pub fn check_input(o: &Outlet, t: &TensorData) -> Result<(), String> {
    let name = quoted(&o.name);
    let Some(ty) = o.ty else {
        return Err(format!("input {name} has a type the host does not serve"));
    };
    if ty != t.ty {
        return Err(format!(
            "input {name} takes {ty:?} elements, not {:?}",
            t.ty
        ));
    }
    let fits = o.dims.len() == t.dims.len()
        && o.dims
            .iter()
            .zip(&t.dims)
            .all(|(&want, &got)| want < 0 || want == i64::from(got));
    if !fits {
        return Err(format!(
            "input {name} has dimensions {} (-1: any), the tensor {}",
            shown(&o.dims),
            shown(&t.dims)
        ));
    }
    check_tensor(t)
}

/// `data` as elements of `N` little-endian bytes each, in one pass over an exactly sized
/// buffer (no per-element growth); an error when `data` is not a whole number of elements.
fn cast<T: Copy + Default, const N: usize>(
    data: &[u8],
    from: fn([u8; N]) -> T,
) -> Result<Vec<T>, String> {
    if !data.len().is_multiple_of(N) {
        return Err(format!(
            "{} bytes of data are not a whole number of {N}-byte elements",
            data.len()
        ));
    }
    let mut out = vec![T::default(); data.len() / N];
    for (x, c) in out.iter_mut().zip(data.chunks_exact(N)) {
        let mut b = [0; N];
        b.copy_from_slice(c);
        *x = from(b);
    }
    Ok(out)
}

/// `data` viewed in place as elements of `T`: on a little-endian host, when the bytes are
/// aligned for `T` and a whole number of elements (`None` else: they must be copied).
fn view<T: bytemuck::Pod>(data: &[u8]) -> Option<&[T]> {
    if cfg!(target_endian = "little") {
        bytemuck::try_cast_slice(data).ok()
    } else {
        None
    }
}

/// Whether [`input_value`] copies `t`'s bytes (they are not aligned for its element type, or
/// the host is big-endian); a view of them needs no memory of its own.
pub fn input_copies(t: &TensorData) -> bool {
    let data = t.data.as_slice();
    match t.ty {
        ElementType::F32 => view::<f32>(data).is_none(),
        ElementType::F64 => view::<f64>(data).is_none(),
        ElementType::I32 => view::<i32>(data).is_none(),
        ElementType::I64 => view::<i64>(data).is_none(),
        ElementType::U8 | ElementType::F16 | ElementType::Bf16 => false,
    }
}

/// `t` as an ONNX Runtime input (checked by [`check_input`] first: the data length matches):
/// a view of its bytes where they can be viewed as its elements, else a converted copy (see
/// [`input_copies`]).
pub fn input_value(t: &TensorData) -> Result<SessionInputValue<'_>, String> {
    fn make<'a, T, const N: usize>(
        shape: Vec<i64>,
        data: &'a [u8],
        from: fn([u8; N]) -> T,
    ) -> Result<SessionInputValue<'a>, String>
    where
        T: bytemuck::Pod + Default + ort::value::PrimitiveTensorElementType + std::fmt::Debug,
    {
        let err = |e: ort::Error| format!("cannot make an ONNX Runtime tensor: {e}");
        Ok(match view::<T>(data) {
            Some(v) => TensorRef::from_array_view((shape, v)).map_err(err)?.into(),
            None => Tensor::from_array((shape, cast(data, from)?))
                .map_err(err)?
                .into(),
        })
    }
    let shape: Vec<i64> = t.dims.iter().map(|&d| i64::from(d)).collect();
    let data = t.data.as_slice();
    match t.ty {
        ElementType::F32 => make(shape, data, f32::from_le_bytes),
        ElementType::F64 => make(shape, data, f64::from_le_bytes),
        ElementType::U8 => make(shape, data, u8::from_le_bytes),
        ElementType::I32 => make(shape, data, i32::from_le_bytes),
        ElementType::I64 => make(shape, data, i64::from_le_bytes),
        ElementType::F16 | ElementType::Bf16 => Err(format!("{:?} tensors are not served", t.ty)),
    }
}

/// The output `name` as ONNX Runtime gave it, if its size is at most `room` bytes (an
/// `Err(TooLarge(bytes))` else). Its bytes stay where ONNX Runtime wrote them.
pub fn from_value(name: &str, v: DynValue, room: u64) -> Result<TensorData, FromValueError> {
    let name = quoted(name);
    let ValueType::Tensor { ty, shape, .. } = v.dtype() else {
        return Err(FromValueError::Unsupported(format!(
            "output {name} is not a tensor"
        )));
    };
    let Some(ty) = ElementType::of_onnx(*ty) else {
        return Err(FromValueError::Unsupported(format!(
            "output {name} has elements of type {ty:?}, which the host does not serve"
        )));
    };
    let dims: Vec<u32> = shape
        .iter()
        .map(|&d| u32::try_from(d))
        .collect::<Result<_, _>>()
        .map_err(|_| FromValueError::Unsupported(format!("output {name} is too large")))?;
    let size = elements(&dims)
        .and_then(|n| n.checked_mul(ty.size()))
        .unwrap_or(u64::MAX);
    if size > room {
        return Err(FromValueError::TooLarge(size));
    }
    // Readable as bytes of the size its dimensions say (so `Bytes::as_slice` never falls
    // back to nothing): a served type in memory the host can read.
    if output_bytes(&v).map(|b| b.len() as u64) != Some(size) {
        return Err(FromValueError::Unsupported(format!(
            "output {name} ({ty:?}) cannot be read out of ONNX Runtime"
        )));
    }
    Ok(TensorData {
        dims,
        ty,
        // `size` fits: the buffer holds that many bytes.
        data: Bytes::Output(v, size as usize),
    })
}

/// Why an output could not be read out.
#[derive(Debug)]
pub enum FromValueError {
    /// Over the room left (its size in bytes).
    TooLarge(u64),
    /// Not a tensor of a type the host serves.
    Unsupported(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outlet(dims: &[i64]) -> Outlet {
        Outlet {
            name: "x".into(),
            dims: dims.to_vec(),
            ty: Some(ElementType::F32),
        }
    }

    fn tensor(dims: &[u32], bytes: usize) -> TensorData {
        TensorData {
            dims: dims.to_vec(),
            ty: ElementType::F32,
            data: vec![0; bytes].into(),
        }
    }

    #[test]
    fn inputs_must_match_the_model_and_their_data() {
        assert!(check_input(&outlet(&[-1, 4]), &tensor(&[3, 4], 48)).is_ok());
        assert!(
            check_input(&outlet(&[-1, 4]), &tensor(&[3, 5], 60)).is_err(),
            "dims"
        );
        assert!(
            check_input(&outlet(&[-1, 4]), &tensor(&[12], 48)).is_err(),
            "rank"
        );
        assert!(
            check_input(&outlet(&[-1, 4]), &tensor(&[3, 4], 47)).is_err(),
            "short"
        );
        let mut t = tensor(&[3, 4], 48);
        t.ty = ElementType::I32;
        assert!(check_input(&outlet(&[-1, 4]), &t).is_err(), "type");
        // Dimensions whose product passes u64: an error, never a panic or a wrap to a small
        // number that the data would match.
        let huge = tensor(&[u32::MAX, u32::MAX, u32::MAX], 0);
        assert!(check_input(&outlet(&[-1, -1, -1]), &huge).is_err());
        assert_eq!(elements(&[u32::MAX, u32::MAX, u32::MAX]), None);
        assert_eq!(elements(&[]), Some(1));
    }

    #[test]
    fn casts_are_little_endian_and_whole_elements_only() {
        let data: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        assert_eq!(cast(&data, f32::from_le_bytes), Ok(vec![1.5, -2.0]));
        assert!(
            cast(&data[..7], f32::from_le_bytes).is_err(),
            "a partial element"
        );
        assert_eq!(cast(&[], i64::from_le_bytes), Ok(vec![]));
    }

    #[test]
    fn aligned_bytes_are_viewed_in_place_and_others_copied() {
        let values = [1.5f32, -2.0, 3.25];
        // Bytes aligned for f32 (an f32 buffer's own): viewed where they are.
        let aligned: &[u8] = bytemuck::cast_slice(&values[..]);
        let v = view::<f32>(aligned).expect("aligned whole elements");
        assert_eq!(v, values);
        assert_eq!(
            v.as_ptr().cast::<u8>(),
            aligned.as_ptr(),
            "in place, not copied"
        );
        assert!(view::<f32>(&aligned[..7]).is_none(), "a partial element");
        // The same bytes one past a 4-byte boundary: never viewed; converted, the same values.
        let mut words = [0u32; 4];
        let buf: &mut [u8] = bytemuck::cast_slice_mut(&mut words[..]);
        buf[1..13].copy_from_slice(aligned);
        assert!(view::<f32>(&buf[1..13]).is_none());
        assert_eq!(cast(&buf[1..13], f32::from_le_bytes), Ok(values.to_vec()));
    }
}
