//! Tensors as the task hands them to the host and gets them back: checked against the graph's
//! inputs before ONNX Runtime sees them, and read out of its outputs within a byte budget.
//! Every size is computed with checked arithmetic: no dimensions a task can pass make the host
//! panic, overflow or allocate past its budget.

use ort::value::{DynValue, Tensor, TensorElementType, ValueType};

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
#[derive(Clone, Debug, PartialEq)]
pub struct TensorData {
    /// Dimensions, outermost first.
    pub dims: Vec<u32>,
    /// Element type.
    pub ty: ElementType,
    /// The elements, little-endian, row-major.
    pub data: Vec<u8>,
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

/// Why `t` cannot be the graph input `o` (`Err(message)`), else `Ok`.
pub fn check_input(o: &Outlet, t: &TensorData) -> Result<(), String> {
    let Some(ty) = o.ty else {
        return Err(format!(
            "input `{}` has a type the host does not serve",
            o.name
        ));
    };
    if ty != t.ty {
        return Err(format!(
            "input `{}` takes {ty:?} elements, not {:?}",
            o.name, t.ty
        ));
    }
    let fits = o.dims.len() == t.dims.len()
        && o.dims
            .iter()
            .zip(&t.dims)
            .all(|(&want, &got)| want < 0 || want == i64::from(got));
    if !fits {
        return Err(format!(
            "input `{}` has dimensions {:?} (-1: any), the tensor {:?}",
            o.name, o.dims, t.dims
        ));
    }
    let want = elements(&t.dims).and_then(|n| n.checked_mul(t.ty.size()));
    if want != Some(t.data.len() as u64) {
        return Err(format!(
            "a tensor of dimensions {:?} and type {:?} has {} bytes of data, not {}",
            t.dims,
            t.ty,
            t.data.len(),
            want.map_or_else(|| "a number that fits".to_owned(), |n| n.to_string())
        ));
    }
    Ok(())
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

/// `t` as an ONNX Runtime value (checked by [`check_input`] first: the data length matches).
pub fn to_value(t: &TensorData) -> Result<DynValue, String> {
    let shape: Vec<i64> = t.dims.iter().map(|&d| i64::from(d)).collect();
    let err = |e: ort::Error| format!("cannot make an ONNX Runtime tensor: {e}");
    Ok(match t.ty {
        ElementType::F32 => Tensor::from_array((shape, cast(&t.data, f32::from_le_bytes)?))
            .map_err(err)?
            .into_dyn(),
        ElementType::F64 => Tensor::from_array((shape, cast(&t.data, f64::from_le_bytes)?))
            .map_err(err)?
            .into_dyn(),
        ElementType::U8 => Tensor::from_array((shape, t.data.clone()))
            .map_err(err)?
            .into_dyn(),
        ElementType::I32 => Tensor::from_array((shape, cast(&t.data, i32::from_le_bytes)?))
            .map_err(err)?
            .into_dyn(),
        ElementType::I64 => Tensor::from_array((shape, cast(&t.data, i64::from_le_bytes)?))
            .map_err(err)?
            .into_dyn(),
        ElementType::F16 | ElementType::Bf16 => {
            return Err(format!("{:?} tensors are not served", t.ty));
        }
    })
}

fn bytes<T: Copy + ort::value::PrimitiveTensorElementType, const N: usize>(
    v: &DynValue,
    to: fn(T) -> [u8; N],
) -> Result<Vec<u8>, String> {
    let (_, data) = v
        .try_extract_tensor::<T>()
        .map_err(|e| format!("cannot read an output tensor: {e}"))?;
    // One exactly sized buffer filled element by element in place (a plain copy on a
    // little-endian host once optimized), never grown byte by byte.
    let len = data
        .len()
        .checked_mul(N)
        .ok_or_else(|| "an output tensor too large to copy".to_owned())?;
    let mut out = vec![0u8; len];
    for (c, &x) in out.chunks_exact_mut(N).zip(data) {
        c.copy_from_slice(&to(x));
    }
    Ok(out)
}

/// The output `name` read out of ONNX Runtime, if its size is at most `room` bytes (an
/// `Err(TooLarge(bytes))` else, before anything is copied).
pub fn from_value(name: &str, v: &DynValue, room: u64) -> Result<TensorData, FromValueError> {
    let ValueType::Tensor { ty, shape, .. } = v.dtype() else {
        return Err(FromValueError::Unsupported(format!(
            "output `{name}` is not a tensor"
        )));
    };
    let Some(ty) = ElementType::of_onnx(*ty) else {
        return Err(FromValueError::Unsupported(format!(
            "output `{name}` has elements of type {ty:?}, which the host does not serve"
        )));
    };
    let dims: Vec<u32> = shape
        .iter()
        .map(|&d| u32::try_from(d))
        .collect::<Result<_, _>>()
        .map_err(|_| FromValueError::Unsupported(format!("output `{name}` is too large")))?;
    let size = elements(&dims)
        .and_then(|n| n.checked_mul(ty.size()))
        .unwrap_or(u64::MAX);
    if size > room {
        return Err(FromValueError::TooLarge(size));
    }
    let data = match ty {
        ElementType::F32 => bytes(v, f32::to_le_bytes),
        ElementType::F64 => bytes(v, f64::to_le_bytes),
        ElementType::U8 => bytes(v, u8::to_le_bytes),
        ElementType::I32 => bytes(v, i32::to_le_bytes),
        ElementType::I64 => bytes(v, i64::to_le_bytes),
        ElementType::F16 | ElementType::Bf16 => Err(format!("{ty:?} outputs are not served")),
    }
    .map_err(FromValueError::Unsupported)?;
    Ok(TensorData { dims, ty, data })
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
            data: vec![0; bytes],
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
}
