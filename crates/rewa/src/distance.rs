//! Metrics and the scalar kernels every scan is built from.
//!
//! Each kernel is written over `chunks_exact` with independent accumulators so that the
//! compiler vectorizes it (AVX2/FMA with the workspace's `target-cpu=native`); each has a
//! plain `*_reference` twin that tests compare it against.
//!
//! Lower distance is always better: inner product and cosine become *negative* similarity
//! here and only here.

use crate::error::{invalid, Error};
use std::fmt;
use std::str::FromStr;

/// How two vectors are compared.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    /// Cosine similarity. Vectors are L2-normalised once at load, then compared by inner product.
    #[default]
    Cosine,
    /// Inner product (larger is closer).
    Ip,
    /// Squared Euclidean distance.
    L2,
}

impl Metric {
    /// The distance between `a` and `b` (lower is closer).
    #[inline(always)]
    pub fn distance(self, a: &[f32], b: &[f32]) -> f32 {
        match self {
            Metric::Cosine | Metric::Ip => -dot(a, b),
            Metric::L2 => l2sq(a, b),
        }
    }
    /// The score users see for a distance: the similarity (larger is closer) for cosine and
    /// ip, the squared distance (smaller is closer) for l2. Every front end prints this.
    pub fn score(self, distance: f32) -> f32 {
        match self {
            Metric::Cosine | Metric::Ip => -distance,
            Metric::L2 => distance,
        }
    }
    /// `true` if inputs must be L2-normalised at load (cosine).
    pub fn normalizes(self) -> bool {
        self == Metric::Cosine
    }
    /// `true` if the metric is compared by inner product once inputs are prepared.
    pub fn is_similarity(self) -> bool {
        self != Metric::L2
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Metric::Cosine => "cosine",
            Metric::Ip => "ip",
            Metric::L2 => "l2",
        })
    }
}

impl FromStr for Metric {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s.to_ascii_lowercase().as_str() {
            "cosine" | "cos" => Ok(Metric::Cosine),
            "ip" | "dot" | "inner_product" => Ok(Metric::Ip),
            "l2" | "euclidean" => Ok(Metric::L2),
            _ => invalid!("unknown metric {s:?} (expected cosine, ip or l2)"),
        }
    }
}

const LANES: usize = 8;

/// Inner product.
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = [0f32; LANES];
    let (ac, bc) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ac.zip(bc) {
        for i in 0..LANES {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Reference twin of [`dot`].
pub fn dot_reference(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (*x as f64) * (*y as f64))
        .sum::<f64>() as f32
}

/// Squared Euclidean distance.
#[inline(always)]
pub fn l2sq(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = [0f32; LANES];
    let (ac, bc) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(x, y)| (x - y) * (x - y))
        .sum();
    for (x, y) in ac.zip(bc) {
        for i in 0..LANES {
            let d = x[i] - y[i];
            acc[i] += d * d;
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Reference twin of [`l2sq`].
pub fn l2sq_reference(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| ((*x as f64) - (*y as f64)).powi(2))
        .sum::<f64>() as f32
}

/// Hamming distance between two equal-length bit codes, 64 bits at a time.
#[inline(always)]
pub fn hamming(a: &[u8], b: &[u8]) -> u32 {
    debug_assert_eq!(a.len(), b.len());
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: u32 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(x, y)| (x ^ y).count_ones())
        .sum();
    let mut acc = 0u32;
    for (x, y) in ac.zip(bc) {
        let x = u64::from_le_bytes(x.try_into().unwrap());
        let y = u64::from_le_bytes(y.try_into().unwrap());
        acc += (x ^ y).count_ones();
    }
    acc + tail
}

/// Reference twin of [`hamming`]: bit by bit.
pub fn hamming_reference(a: &[u8], b: &[u8]) -> u32 {
    let mut n = 0;
    for (x, y) in a.iter().zip(b) {
        for bit in 0..8 {
            n += (((x >> bit) & 1) != ((y >> bit) & 1)) as u32;
        }
    }
    n
}

/// `sum_i w[i] * code[i]`: the inner product of a float query with unsigned 8-bit codes.
#[inline(always)]
pub fn dot_u8(w: &[f32], code: &[u8]) -> f32 {
    debug_assert_eq!(w.len(), code.len());
    let mut acc = [0f32; LANES];
    let (wc, cc) = (w.chunks_exact(LANES), code.chunks_exact(LANES));
    let tail: f32 = wc
        .remainder()
        .iter()
        .zip(cc.remainder())
        .map(|(x, &c)| x * c as f32)
        .sum();
    for (x, c) in wc.zip(cc) {
        for i in 0..LANES {
            acc[i] += x[i] * c[i] as f32;
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Reference twin of [`dot_u8`].
pub fn dot_u8_reference(w: &[f32], code: &[u8]) -> f32 {
    w.iter()
        .zip(code)
        .map(|(x, &c)| *x as f64 * c as f64)
        .sum::<f64>() as f32
}

/// `sum_i (a[i] - s[i] * code[i])^2`: squared L2 from a float query to decoded 8-bit codes.
#[inline(always)]
pub fn l2sq_u8(a: &[f32], s: &[f32], code: &[u8]) -> f32 {
    debug_assert!(a.len() == code.len() && s.len() == code.len());
    let mut acc = [0f32; LANES];
    let (ac, sc, cc) = (
        a.chunks_exact(LANES),
        s.chunks_exact(LANES),
        code.chunks_exact(LANES),
    );
    let mut tail = 0f32;
    for ((x, y), &c) in ac
        .remainder()
        .iter()
        .zip(sc.remainder())
        .zip(cc.remainder())
    {
        let d = x - y * c as f32;
        tail += d * d;
    }
    for ((x, y), c) in ac.zip(sc).zip(cc) {
        for i in 0..LANES {
            let d = x[i] - y[i] * c[i] as f32;
            acc[i] += d * d;
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Reference twin of [`l2sq_u8`].
pub fn l2sq_u8_reference(a: &[f32], s: &[f32], code: &[u8]) -> f32 {
    a.iter()
        .zip(s)
        .zip(code)
        .map(|((x, y), &c)| (*x as f64 - *y as f64 * c as f64).powi(2))
        .sum::<f64>() as f32
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn close(a: f32, b: f32) -> bool {
        (a - b).abs() <= 1e-3 * (1.0 + a.abs().max(b.abs()))
    }

    /// `close`, or within f32 rounding of a sum whose terms' magnitudes add to `terms`: when
    /// the terms cancel, the sum is small but its rounding error is not (8-lane f32 sums
    /// of 1,100 terms err by at most about 140 ulps of `terms`).
    fn close_sum(a: f32, b: f32, terms: f64) -> bool {
        close(a, b) || ((a - b).abs() as f64) <= 2e-5 * (1.0 + terms)
    }

    proptest! {
        #[test]
        fn float_kernels_match_reference(v in (0usize..=1100).prop_flat_map(|n| (
            proptest::collection::vec(-10f32..10.0, n),
            proptest::collection::vec(-10f32..10.0, n),
            proptest::collection::vec(any::<u8>(), n)))) {
            let (a, b, c) = v;
            let dot_terms: f64 = a.iter().zip(&b).map(|(x, y)| (*x as f64 * *y as f64).abs()).sum();
            let u8_terms: f64 = a.iter().zip(&c).map(|(x, &y)| (*x as f64 * y as f64).abs()).sum();
            prop_assert!(close_sum(dot(&a, &b), dot_reference(&a, &b), dot_terms));
            prop_assert!(close(l2sq(&a, &b), l2sq_reference(&a, &b)));
            prop_assert!(close_sum(dot_u8(&a, &c), dot_u8_reference(&a, &c), u8_terms));
            prop_assert!(close(l2sq_u8(&a, &b, &c), l2sq_u8_reference(&a, &b, &c)));
        }

        #[test]
        fn hamming_matches_reference(v in (0usize..=1100).prop_flat_map(|n| (
            proptest::collection::vec(any::<u8>(), n),
            proptest::collection::vec(any::<u8>(), n)))) {
            let (a, b) = v;
            prop_assert_eq!(hamming(&a, &b), hamming_reference(&a, &b));
        }
    }

    #[test]
    fn metric_parses_and_prints() {
        for m in [Metric::Cosine, Metric::Ip, Metric::L2] {
            assert_eq!(m.to_string().parse::<Metric>().unwrap(), m);
        }
        assert!(matches!(
            "manhattan".parse::<Metric>(),
            Err(Error::InvalidInput(_))
        ));
    }
}
