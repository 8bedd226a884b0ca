//! Dense float vectors: one flat row-major buffer plus a dimension.

use crate::error::{invalid, Error, Result};

/// An owned set of `len()` vectors of `dim` floats each, row-major.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Vectors {
    dim: usize,
    data: Vec<f32>,
}

/// A borrowed view of [`Vectors`].
#[derive(Clone, Copy, Debug)]
pub struct VectorsRef<'a> {
    dim: usize,
    data: &'a [f32],
}

impl Vectors {
    /// Wraps `data` as rows of `dim` floats. Fails if `dim` is 0 or does not divide the length.
    pub fn new(dim: usize, data: Vec<f32>) -> Result<Self> {
        check_shape(dim, data.len())?;
        Ok(Vectors { dim, data })
    }
    /// An empty set of dimension `dim`.
    pub fn empty(dim: usize) -> Self {
        Vectors {
            dim,
            data: Vec::new(),
        }
    }
    /// Borrows the whole set.
    pub fn view(&self) -> VectorsRef<'_> {
        VectorsRef {
            dim: self.dim,
            data: &self.data,
        }
    }
    /// The dimension of each vector.
    pub fn dim(&self) -> usize {
        self.dim
    }
    /// The number of vectors.
    pub fn len(&self) -> usize {
        self.data.len().checked_div(self.dim).unwrap_or(0)
    }
    /// `true` if there are no vectors.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
    /// Row `i`. Panics if `i >= len()`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }
    /// The flat buffer.
    pub fn as_slice(&self) -> &[f32] {
        &self.data
    }
    /// The flat buffer, mutable.
    pub fn as_mut_slice(&mut self) -> &mut [f32] {
        &mut self.data
    }
    /// Gives up the flat buffer.
    pub fn into_vec(self) -> Vec<f32> {
        self.data
    }
    /// Appends one row. Fails on a dimension mismatch.
    pub fn push(&mut self, row: &[f32]) -> Result<()> {
        if row.len() != self.dim {
            return Err(Error::DimMismatch {
                expected: self.dim,
                got: row.len(),
            });
        }
        self.data.extend_from_slice(row);
        Ok(())
    }
    /// Appends all rows of `other`. Fails on a dimension mismatch.
    pub fn extend(&mut self, other: VectorsRef<'_>) -> Result<()> {
        if other.dim != self.dim {
            return Err(Error::DimMismatch {
                expected: self.dim,
                got: other.dim,
            });
        }
        self.data.extend_from_slice(other.data);
        Ok(())
    }
    /// Scales every row to unit L2 norm (rows of norm 0 are left as they are).
    pub fn normalize(&mut self) {
        for row in self.data.chunks_exact_mut(self.dim) {
            normalize(row);
        }
    }
    /// The rows at `ids`, in that order.
    pub fn gather(&self, ids: &[u32]) -> Vectors {
        self.view().gather(ids)
    }
}

impl<'a> VectorsRef<'a> {
    /// Views `data` as rows of `dim` floats. Fails if `dim` is 0 or does not divide the length.
    pub fn new(dim: usize, data: &'a [f32]) -> Result<Self> {
        check_shape(dim, data.len())?;
        Ok(VectorsRef { dim, data })
    }
    /// The dimension of each vector.
    pub fn dim(&self) -> usize {
        self.dim
    }
    /// The number of vectors.
    pub fn len(&self) -> usize {
        self.data.len() / self.dim
    }
    /// `true` if there are no vectors.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
    /// Row `i`. Panics if `i >= len()`.
    pub fn row(&self, i: usize) -> &'a [f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }
    /// Iterates over the rows.
    pub fn rows(&self) -> std::slice::ChunksExact<'a, f32> {
        self.data.chunks_exact(self.dim)
    }
    /// The flat buffer.
    pub fn as_slice(&self) -> &'a [f32] {
        self.data
    }
    /// Rows `start..end`.
    pub fn slice(&self, start: usize, end: usize) -> VectorsRef<'a> {
        VectorsRef {
            dim: self.dim,
            data: &self.data[start * self.dim..end * self.dim],
        }
    }
    /// Copies the view into an owned set.
    pub fn to_owned(&self) -> Vectors {
        Vectors {
            dim: self.dim,
            data: self.data.to_vec(),
        }
    }
    /// The rows at `ids`, in that order.
    pub fn gather(&self, ids: &[u32]) -> Vectors {
        let mut data = Vec::with_capacity(ids.len() * self.dim);
        for &i in ids {
            data.extend_from_slice(self.row(i as usize));
        }
        Vectors {
            dim: self.dim,
            data,
        }
    }
    /// Fails with `InvalidInput` naming the first row holding NaN or infinity.
    pub fn check_finite(&self) -> Result<()> {
        if let Some(i) = self.rows().position(|r| r.iter().any(|v| !v.is_finite())) {
            return invalid!("row {i} holds NaN or infinity");
        }
        Ok(())
    }
}

impl<'a> From<&'a Vectors> for VectorsRef<'a> {
    fn from(v: &'a Vectors) -> Self {
        v.view()
    }
}

fn check_shape(dim: usize, len: usize) -> Result<()> {
    if dim == 0 {
        return invalid!("vector dimension must be at least 1");
    }
    if !len.is_multiple_of(dim) {
        return invalid!("buffer of {len} floats is not a whole number of rows of {dim}");
    }
    Ok(())
}

/// Scales `v` to unit L2 norm in place; a zero vector stays zero.
///
/// The norm is taken in f32 when that is safe and in f64 when the squared norm would
/// overflow (components around 1e20) or underflow (around 1e-20): in f32 every such vector
/// would become zero or stay unscaled, and search would rank them all alike.
pub fn normalize(v: &mut [f32]) {
    let sq = crate::distance::dot(v, v);
    if sq.is_finite() && sq > 1e-30 {
        let inv = 1.0 / sq.sqrt();
        v.iter_mut().for_each(|x| *x *= inv);
        return;
    }
    let n = v.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt();
    if n > 0.0 && n.is_finite() {
        v.iter_mut().for_each(|x| *x = (*x as f64 / n) as f32);
    }
}

/// Vectors that crossed the one boundary where inputs are checked (finite) and prepared for a
/// metric (L2-normalised for cosine). Index building, search, evaluation and tuning take
/// these, so no input is checked or normalised twice.
#[derive(Clone, Debug)]
pub struct Prepared<'a> {
    metric: crate::Metric,
    dim: usize,
    data: std::borrow::Cow<'a, [f32]>,
}

impl crate::Metric {
    /// Checks `v` and prepares it for this metric (a normalised copy for cosine, a borrow
    /// otherwise).
    pub fn prepare<'a>(self, v: VectorsRef<'a>) -> Result<Prepared<'a>> {
        v.check_finite()?;
        let data = if self.normalizes() {
            let mut o = v.to_owned();
            o.normalize();
            std::borrow::Cow::Owned(o.data)
        } else {
            std::borrow::Cow::Borrowed(v.as_slice())
        };
        Ok(Prepared {
            metric: self,
            dim: v.dim(),
            data,
        })
    }
    /// Checks `v` and prepares it for this metric in place (no copy).
    pub fn prepare_owned(self, mut v: Vectors) -> Result<Prepared<'static>> {
        v.view().check_finite()?;
        if self.normalizes() {
            v.normalize();
        }
        Ok(Prepared {
            metric: self,
            dim: v.dim,
            data: std::borrow::Cow::Owned(v.data),
        })
    }
}

impl Prepared<'_> {
    /// The metric these vectors were prepared for.
    pub fn metric(&self) -> crate::Metric {
        self.metric
    }
    /// The prepared rows.
    pub fn view(&self) -> VectorsRef<'_> {
        VectorsRef {
            dim: self.dim,
            data: &self.data,
        }
    }
    /// The number of vectors.
    pub fn len(&self) -> usize {
        self.data.len() / self.dim
    }
    /// `true` if there are none.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
    /// The dimension.
    pub fn dim(&self) -> usize {
        self.dim
    }
    /// Rows `start..end`, still prepared.
    pub fn slice(&self, start: usize, end: usize) -> Prepared<'_> {
        Prepared {
            metric: self.metric,
            dim: self.dim,
            data: std::borrow::Cow::Borrowed(&self.data[start * self.dim..end * self.dim]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_and_tiny_components_normalise_like_ordinary_ones() {
        let v = crate::testutil::gaussian(50, 33, 5);
        let mut want = v.clone();
        want.normalize();
        for scale in [1e20f32, 1e30, 1e-20, 1e-30] {
            let mut s = v.clone();
            s.as_mut_slice().iter_mut().for_each(|x| *x *= scale);
            s.normalize();
            for (a, b) in s.as_slice().iter().zip(want.as_slice()) {
                assert!((a - b).abs() < 1e-5, "scale {scale}: {a} vs {b}");
            }
        }
        // and search over such vectors ranks as over the ordinary ones
        let index = |v: &Vectors| {
            let spec = crate::IndexSpec {
                metric: crate::Metric::Cosine,
                pipeline: "exact:5".parse().unwrap(),
                seed: 1,
            };
            crate::Index::build(&spec, v.view()).unwrap()
        };
        let mut big = v.clone();
        big.as_mut_slice().iter_mut().for_each(|x| *x *= 1e20);
        let p = crate::SearchParams {
            k: 5,
            pipeline: None,
            filter: None,
        };
        let a = index(&big).search_batch(big.view(), &p).unwrap();
        let b = index(&v).search_batch(v.view(), &p).unwrap();
        let ids = |h: &Vec<Vec<crate::Hit>>| -> Vec<Vec<u32>> {
            h.iter().map(|r| r.iter().map(|x| x.id).collect()).collect()
        };
        assert_eq!(ids(&a), ids(&b));
        assert_ne!(
            ids(&a)[1][0],
            0,
            "every query found row 0: the norms overflowed"
        );
    }

    #[test]
    fn prepare_checks_and_normalises_once() {
        let v = Vectors::new(2, vec![3.0, 4.0, f32::NAN, 1.0]).unwrap();
        assert!(crate::Metric::Cosine.prepare(v.view()).is_err());
        let v = Vectors::new(2, vec![3.0, 4.0]).unwrap();
        let p = crate::Metric::Cosine.prepare(v.view()).unwrap();
        assert_eq!(p.view().as_slice(), &[0.6, 0.8]);
        let p = crate::Metric::Ip.prepare(v.view()).unwrap();
        assert_eq!(p.view().as_slice(), &[3.0, 4.0]);
    }
}
