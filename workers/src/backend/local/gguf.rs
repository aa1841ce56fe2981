//! A reader for GGUF files (versions 2 and 3): the metadata key/values and the
//! tensor table, with each tensor's bytes borrowed from the file's contents.

use std::collections::HashMap;

/// GGML tensor types this backend knows how to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorType {
    F32,
    F16,
    Q4_1,
    Q8_0,
    /// Any other GGML type, by its number; reported in errors.
    Other(u32),
}

impl TensorType {
    fn from_id(id: u32) -> Self {
        match id {
            0 => Self::F32,
            1 => Self::F16,
            3 => Self::Q4_1,
            8 => Self::Q8_0,
            other => Self::Other(other),
        }
    }

    /// Bytes taken by `elements` values (a whole number of blocks).
    fn bytes_for(self, elements: u64) -> Option<u64> {
        match self {
            Self::F32 => elements.checked_mul(4),
            Self::F16 => elements.checked_mul(2),
            Self::Q4_1 => elements.is_multiple_of(32).then_some(elements / 32 * 20),
            Self::Q8_0 => elements.is_multiple_of(32).then_some(elements / 32 * 34),
            Self::Other(_) => None,
        }
    }
}

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Int(i64),
    Uint(u64),
    Float(f64),
    Bool(bool),
    Str(String),
    Array(Vec<Value>),
}

impl Value {
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::Uint(v) => Some(v),
            Value::Int(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::Float(v) => Some(v),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// One entry of the tensor table.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub ty: TensorType,
    /// GGML dimensions, innermost first: a matrix is `[columns, rows]`.
    pub dims: Vec<u64>,
    offset: u64,
    len: u64,
}

/// A parsed GGUF file.
#[derive(Debug)]
pub struct Gguf {
    pub metadata: HashMap<String, Value>,
    pub tensors: HashMap<String, TensorInfo>,
    data: Vec<u8>,
    data_start: usize,
}

/// What is wrong with a file that claims to be GGUF.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GgufError {
    #[error("not a GGUF file (it does not start with the GGUF magic)")]
    NotGguf,
    #[error("GGUF version {0} is not supported (2 or 3)")]
    Version(u32),
    #[error("truncated or malformed GGUF: {0}")]
    Malformed(String),
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], GgufError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len())
            .ok_or_else(|| {
                GgufError::Malformed(format!("read past the end at byte {}", self.at))
            })?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], GgufError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }
    fn u32(&mut self) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    fn len(&mut self) -> Result<usize, GgufError> {
        let n = self.u64()?;
        // Any length longer than the file is corrupt; checking here keeps a bad
        // count from turning into a huge allocation.
        usize::try_from(n)
            .ok()
            .filter(|&n| n <= self.bytes.len())
            .ok_or_else(|| GgufError::Malformed(format!("length {n} at byte {}", self.at - 8)))
    }
    fn string(&mut self) -> Result<String, GgufError> {
        let n = self.len()?;
        String::from_utf8(self.take(n)?.to_vec())
            .map_err(|_| GgufError::Malformed(format!("string at byte {} is not UTF-8", self.at)))
    }
    fn value(&mut self, ty: u32, depth: u32) -> Result<Value, GgufError> {
        Ok(match ty {
            0 => Value::Uint(u64::from(self.array::<1>()?[0])),
            1 => Value::Int(i64::from(i8::from_le_bytes(self.array()?))),
            2 => Value::Uint(u64::from(u16::from_le_bytes(self.array()?))),
            3 => Value::Int(i64::from(i16::from_le_bytes(self.array()?))),
            4 => Value::Uint(u64::from(self.u32()?)),
            5 => Value::Int(i64::from(i32::from_le_bytes(self.array()?))),
            6 => Value::Float(f64::from(f32::from_le_bytes(self.array()?))),
            7 => Value::Bool(self.array::<1>()?[0] != 0),
            8 => Value::Str(self.string()?),
            9 if depth == 0 => {
                let inner = self.u32()?;
                let n = self.len()?;
                let mut items = Vec::with_capacity(n.min(1 << 20));
                for _ in 0..n {
                    items.push(self.value(inner, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::Uint(self.u64()?),
            11 => Value::Int(i64::from_le_bytes(self.array()?)),
            12 => Value::Float(f64::from_le_bytes(self.array()?)),
            other => {
                return Err(GgufError::Malformed(format!(
                    "metadata value type {other} at byte {}",
                    self.at
                )));
            }
        })
    }
}

impl Gguf {
    /// Parses a whole file's contents.
    pub fn parse(data: Vec<u8>) -> Result<Self, GgufError> {
        let mut r = Reader {
            bytes: &data,
            at: 0,
        };
        if r.take(4).ok() != Some(b"GGUF".as_slice()) {
            return Err(GgufError::NotGguf);
        }
        let version = r.u32()?;
        if !(2..=3).contains(&version) {
            return Err(GgufError::Version(version));
        }
        let n_tensors = r.len()?;
        let n_kv = r.len()?;
        let mut metadata = HashMap::new();
        for _ in 0..n_kv {
            let key = r.string()?;
            let ty = r.u32()?;
            let value = r.value(ty, 0)?;
            metadata.insert(key, value);
        }
        let mut raw = Vec::with_capacity(n_tensors);
        for _ in 0..n_tensors {
            let name = r.string()?;
            let n_dims = r.u32()?;
            if n_dims > 4 {
                return Err(GgufError::Malformed(format!(
                    "tensor {name} has {n_dims} dimensions"
                )));
            }
            let dims = (0..n_dims)
                .map(|_| r.u64())
                .collect::<Result<Vec<_>, _>>()?;
            let ty = TensorType::from_id(r.u32()?);
            let offset = r.u64()?;
            raw.push((name, dims, ty, offset));
        }
        let alignment = metadata
            .get("general.alignment")
            .and_then(Value::as_u64)
            .unwrap_or(32)
            .max(1);
        let data_start = usize::try_from((r.at as u64).div_ceil(alignment) * alignment)
            .map_err(|_| GgufError::Malformed("data offset".into()))?;
        let data_len = (data.len() as u64).saturating_sub(data_start as u64);
        let mut tensors = HashMap::new();
        for (name, dims, ty, offset) in raw {
            let elements = dims
                .iter()
                .try_fold(1u64, |acc, &d| acc.checked_mul(d))
                .ok_or_else(|| GgufError::Malformed(format!("tensor {name} is too large")))?;
            // Unknown types have no known size: they are kept (so a clear
            // error can name them later) with an empty extent.
            let len = ty.bytes_for(elements).unwrap_or(0);
            if matches!(ty, TensorType::Other(_)) && len == 0 {
                tensors.insert(
                    name,
                    TensorInfo {
                        ty,
                        dims,
                        offset: 0,
                        len: 0,
                    },
                );
                continue;
            }
            if ty.bytes_for(elements).is_none()
                || offset.checked_add(len).is_none_or(|end| end > data_len)
            {
                return Err(GgufError::Malformed(format!(
                    "tensor {name} ({ty:?}, dims {dims:?}) does not fit in the file"
                )));
            }
            tensors.insert(
                name,
                TensorInfo {
                    ty,
                    dims,
                    offset,
                    len,
                },
            );
        }
        Ok(Self {
            metadata,
            tensors,
            data,
            data_start,
        })
    }

    /// A tensor's bytes (empty for a type of unknown size).
    pub fn bytes(&self, info: &TensorInfo) -> &[u8] {
        // `parse` checked that the extent lies inside the data section.
        let start = self.data_start + info.offset as usize;
        &self.data[start..start + info.len as usize]
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as u64).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }

    /// A minimal file: one string key, one u32 array key, one F32 tensor.
    pub(crate) fn tiny_file() -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&1u64.to_le_bytes()); // tensors
        out.extend_from_slice(&2u64.to_le_bytes()); // metadata
        string(&mut out, "general.architecture");
        out.extend_from_slice(&8u32.to_le_bytes());
        string(&mut out, "llama");
        string(&mut out, "list");
        out.extend_from_slice(&9u32.to_le_bytes());
        out.extend_from_slice(&4u32.to_le_bytes());
        out.extend_from_slice(&2u64.to_le_bytes());
        out.extend_from_slice(&7u32.to_le_bytes());
        out.extend_from_slice(&9u32.to_le_bytes());
        string(&mut out, "norm");
        out.extend_from_slice(&1u32.to_le_bytes());
        out.extend_from_slice(&2u64.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&0u64.to_le_bytes());
        while !out.len().is_multiple_of(32) {
            out.push(0);
        }
        out.extend_from_slice(&1.5f32.to_le_bytes());
        out.extend_from_slice(&(-2f32).to_le_bytes());
        out
    }

    #[test]
    fn parses_metadata_and_tensors() {
        let g = Gguf::parse(tiny_file()).unwrap();
        assert_eq!(
            g.get("general.architecture").and_then(Value::as_str),
            Some("llama")
        );
        assert_eq!(
            g.get("list"),
            Some(&Value::Array(vec![Value::Uint(7), Value::Uint(9)]))
        );
        let t = &g.tensors["norm"];
        assert_eq!(
            (t.ty, t.dims.as_slice()),
            (TensorType::F32, [2u64].as_slice())
        );
        assert_eq!(
            g.bytes(t),
            [1.5f32.to_le_bytes(), (-2f32).to_le_bytes()].concat()
        );
    }

    #[test]
    fn rejects_other_files_and_truncation() {
        assert_eq!(
            Gguf::parse(b"{\"not\": \"gguf\"}".to_vec()).unwrap_err(),
            GgufError::NotGguf
        );
        let mut file = tiny_file();
        file.truncate(file.len() - 4);
        assert!(matches!(
            Gguf::parse(file).unwrap_err(),
            GgufError::Malformed(m) if m.contains("norm")
        ));
        let mut file = tiny_file();
        file[4] = 9;
        assert_eq!(Gguf::parse(file).unwrap_err(), GgufError::Version(9));
    }
}
