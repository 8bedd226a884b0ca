//! Fitted parameters as named tensors: what each encoder part saves, and a checked reader it
//! loads from. Each fitted type says which tensors it has (`tensors`) and how it is rebuilt
//! from them (`from_tensors`); the index file and a learned model's directory only store
//! the tensors (as safetensors), so a new encoder needs no change in either.

use crate::error::{Error, Result};
use std::borrow::Cow;
use std::path::Path;

/// The values of a tensor.
#[derive(Clone, Debug)]
pub enum TensorData<'a> {
    /// 32-bit floats.
    F32(Cow<'a, [f32]>),
    /// 32-bit unsigned integers.
    U32(Cow<'a, [u32]>),
}

/// One named tensor of fitted parameters.
#[derive(Clone, Debug)]
pub struct Tensor<'a> {
    /// Name, unique within its part (`signs`, `components`, ...).
    pub name: String,
    /// Shape; the product is the number of values.
    pub shape: Vec<usize>,
    /// The values.
    pub data: TensorData<'a>,
}

impl<'a> Tensor<'a> {
    /// An f32 tensor borrowing `v`.
    pub fn f32(name: &str, shape: Vec<usize>, v: &'a [f32]) -> Self {
        Tensor {
            name: name.into(),
            shape,
            data: TensorData::F32(Cow::Borrowed(v)),
        }
    }
    /// A u32 tensor borrowing `v`.
    pub fn u32(name: &str, shape: Vec<usize>, v: &'a [u32]) -> Self {
        Tensor {
            name: name.into(),
            shape,
            data: TensorData::U32(Cow::Borrowed(v)),
        }
    }
    /// The values as little-endian bytes (hosts are little-endian, see `lib.rs`).
    pub fn bytes(&self) -> &[u8] {
        match &self.data {
            TensorData::F32(v) => bytemuck::cast_slice(v),
            TensorData::U32(v) => bytemuck::cast_slice(v),
        }
    }
    /// The safetensors dtype.
    pub(crate) fn dtype(&self) -> safetensors::Dtype {
        match self.data {
            TensorData::F32(_) => safetensors::Dtype::F32,
            TensorData::U32(_) => safetensors::Dtype::U32,
        }
    }
}

/// Reads the tensors of one part (names under a prefix) from a safetensors file, checking
/// dtype and size; every failure is [`Error::Corrupt`] naming the file.
pub struct TensorSource<'a> {
    st: &'a safetensors::SafeTensors<'a>,
    path: &'a Path,
    prefix: String,
}

impl<'a> TensorSource<'a> {
    /// The tensors of `st`, read from `path`, with no prefix.
    pub fn new(st: &'a safetensors::SafeTensors<'a>, path: &'a Path) -> Self {
        TensorSource {
            st,
            path,
            prefix: String::new(),
        }
    }
    /// The tensors whose names start with `prefix.`.
    pub fn part(&self, prefix: &str) -> TensorSource<'a> {
        TensorSource {
            st: self.st,
            path: self.path,
            prefix: format!("{}{prefix}.", self.prefix),
        }
    }
    /// The file, for error messages.
    pub fn path(&self) -> &Path {
        self.path
    }
    /// A corrupt-file error naming this part.
    pub fn corrupt(&self, reason: impl std::fmt::Display) -> Error {
        Error::corrupt(
            self.path,
            format!("{}: {reason}", self.prefix.trim_end_matches('.')),
        )
    }
    fn get(&self, name: &str) -> Result<safetensors::tensor::TensorView<'a>> {
        let full = format!("{}{name}", self.prefix);
        self.st
            .tensor(&full)
            .map_err(|_| Error::corrupt(self.path, format!("missing tensor {full}")))
    }
    /// The shape of tensor `name`.
    pub fn shape(&self, name: &str) -> Result<Vec<usize>> {
        Ok(self.get(name)?.shape().to_vec())
    }
    fn values<T: bytemuck::Pod>(
        &self,
        name: &str,
        dtype: safetensors::Dtype,
        len: usize,
    ) -> Result<Vec<T>> {
        let t = self.get(name)?;
        let n: usize = t.shape().iter().product();
        if t.dtype() != dtype || n != len || t.data().len() != len * std::mem::size_of::<T>() {
            return Err(Error::corrupt(
                self.path,
                format!(
                    "tensor {}{name}: {:?} {:?}, expected {dtype:?} of {len} values",
                    self.prefix,
                    t.dtype(),
                    t.shape()
                ),
            ));
        }
        Ok(bytemuck::pod_collect_to_vec(t.data()))
    }
    /// Tensor `name` as `len` f32 values, all finite (a NaN in fitted parameters would rank
    /// silently wrong).
    pub fn f32(&self, name: &str, len: usize) -> Result<Vec<f32>> {
        let v: Vec<f32> = self.values(name, safetensors::Dtype::F32, len)?;
        if let Some(i) = v.iter().position(|x| !x.is_finite()) {
            return Err(Error::corrupt(
                self.path,
                format!("tensor {}{name}: value {i} is {}", self.prefix, v[i]),
            ));
        }
        Ok(v)
    }
    /// Tensor `name` as `len` u32 values.
    pub fn u32(&self, name: &str, len: usize) -> Result<Vec<u32>> {
        self.values(name, safetensors::Dtype::U32, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_checks_names_sizes_dtypes_and_finiteness() {
        let good = [1.0f32, 2.0, 3.0];
        let bad = [1.0f32, f32::NAN];
        let keep = [7u32, 9];
        let ts = [
            Tensor::f32("p.good", vec![3], &good),
            Tensor::f32("p.bad", vec![2], &bad),
            Tensor::u32("p.keep", vec![2], &keep),
        ];
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = ts
            .iter()
            .map(|t| {
                let v = safetensors::tensor::TensorView::new(t.dtype(), t.shape.clone(), t.bytes())
                    .unwrap();
                (t.name.clone(), v)
            })
            .collect();
        let bytes = safetensors::serialize(views, None).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let path = Path::new("params.safetensors");
        let src = TensorSource::new(&st, path).part("p");
        assert_eq!(src.f32("good", 3).unwrap(), good);
        assert_eq!(src.u32("keep", 2).unwrap(), keep);
        for (what, r) in [
            ("nan", src.f32("bad", 2).map(|_| ())),
            ("size", src.f32("good", 4).map(|_| ())),
            ("dtype", src.f32("keep", 2).map(|_| ())),
            ("missing", src.f32("nope", 1).map(|_| ())),
        ] {
            assert!(matches!(r, Err(Error::Corrupt { .. })), "{what}: {r:?}");
        }
    }
}
