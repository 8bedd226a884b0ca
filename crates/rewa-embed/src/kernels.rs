//! The element-wise kernels of the forward pass: GELU with its bias, softmax, and the
//! polynomial `exp` and `erf` they are built on. Each is compiled for AVX2 + FMA and chosen at
//! run time (`dispatched!`), with the plain build as the fallback and as the twin its tests
//! compare against.
//!
//! Both the dense forward pass ([`crate::native`]) and REWA attention ([`crate::attention`])
//! call these; neither imports the other for them.

dispatched!(
    /// `x = gelu(x + b)` over a row.
    pub(crate) fn bias_gelu(x: &mut [f32], b: &[f32]) => bias_gelu_body
);
dispatched!(
    /// Softmax of a row in place.
    pub(crate) fn softmax(x: &mut [f32]) => softmax_body
);

#[inline(always)]
fn bias_gelu_body(x: &mut [f32], b: &[f32]) {
    for (v, bb) in x.iter_mut().zip(b) {
        let y = *v + bb;
        *v = 0.5 * y * (1.0 + erf(y * std::f32::consts::FRAC_1_SQRT_2));
    }
}

#[inline(always)]
fn softmax_body(x: &mut [f32]) {
    // Reductions over 8 independent lanes, so the compiler can keep them in one vector
    // register (a single running max or sum is a serial chain it may not reorder).
    const L: usize = 8;
    let mut m = [f32::NEG_INFINITY; L];
    let mut chunks = x.chunks_exact(L);
    for c in &mut chunks {
        for j in 0..L {
            m[j] = if c[j] > m[j] { c[j] } else { m[j] };
        }
    }
    let mut max = chunks
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |a, &b| if b > a { b } else { a });
    for v in m {
        max = if v > max { v } else { max };
    }
    for v in x.iter_mut() {
        *v = exp(*v - max);
    }
    let mut acc = [0f32; L];
    let mut chunks = x.chunks_exact(L);
    for c in &mut chunks {
        for j in 0..L {
            acc[j] += c[j];
        }
    }
    let sum = acc.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>();
    let inv = 1.0 / sum;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// `e^x` for x <= 0 (and moderate positive x) by Cephes' `expf` polynomial: about 1 ulp,
/// branch-free so loops over it vectorise.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.3, 88.3);
    let n = (x * std::f32::consts::LOG2_E + 0.5).floor();
    let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let r2 = r * r;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let y = p * r2 + r + 1.0;
    y * f32::from_bits(int_of(n).wrapping_add(127) << 23)
}

/// `v` (a whole number, |v| < 2^22) as an integer, by the bits of `v + 1.5 * 2^23` (whose last
/// mantissa bits then hold it): plain integer arithmetic that vectorises, where `v as i32`
/// (a saturating cast) is compiled to one scalar conversion and two branches per lane. For
/// `v` not whole it rounds to nearest, ties to even.
#[inline(always)]
pub(crate) fn int_of(v: f32) -> u32 {
    (v + 12_582_912.0).to_bits().wrapping_sub(0x4B40_0000)
}

/// `erf(x)` by Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7 in exact arithmetic, < 6e-7 in f32), branch-free.
#[inline(always)]
pub(crate) fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = t
        * (0.254_829_6
            + t * (-0.284_496_74 + t * (1.421_413_7 + t * (-1.453_152 + t * 1.061_405_4))));
    let y = 1.0 - poly * exp(-a * a);
    y.copysign(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_and_erf_match_references() {
        let mut worst = (0f32, 0f32);
        for i in -40000..=4000 {
            let x = i as f32 * 0.002;
            let (e, want) = (exp(x), x.exp());
            worst.0 = worst.0.max(((e - want) / want).abs());
        }
        for i in -3000..=3000 {
            let x = i as f32 * 0.001;
            worst.1 = worst.1.max((erf(x) - erf_series(x)).abs());
        }
        assert!(worst.0 < 3e-7, "exp relative error {}", worst.0);
        assert!(worst.1 < 6e-7, "erf absolute error {}", worst.1);
        for x in [3.0f32, 4.0, 6.0, 10.0] {
            assert!((1.0 - erf(x)).abs() < 3e-5 && erf(-x) == -erf(x), "{x}");
        }
        assert_eq!(exp(-200.0), exp(-87.3));
        assert!(exp(-87.3) > 0.0);
        for v in [
            -126.0f32, -1.0, 0.0, 1.0, 127.0, 128.0, 2.5, 3.5, -2.5, 0.49999997,
        ] {
            assert_eq!(int_of(v) as i32, v.round_ties_even() as i32, "{v}");
        }
    }

    /// erf in f64 by its Taylor series (exact enough for |x| <= 3).
    fn erf_series(x: f32) -> f32 {
        let x = x as f64;
        let (mut sum, mut term, mut n) = (0.0, x, 0.0);
        while term.abs() > 1e-18 || n < 5.0 {
            sum += term / (2.0 * n + 1.0);
            n += 1.0;
            term *= -x * x / n;
        }
        (sum * 2.0 / std::f64::consts::PI.sqrt()) as f32
    }

    #[test]
    fn dispatched_twins_agree() {
        let row: Vec<f32> = (0..1000)
            .map(|i| ((i * 37) % 101) as f32 * 0.13 - 6.0)
            .collect();
        let b: Vec<f32> = (0..1000).map(|i| (i % 7) as f32 * 0.01).collect();
        let (mut a, mut c) = (row.clone(), row.clone());
        bias_gelu(&mut a, &b);
        bias_gelu_body(&mut c, &b);
        for (x, y) in a.iter().zip(&c) {
            assert!((x - y).abs() <= 1e-6 * x.abs().max(1.0), "{x} {y}");
        }
        let (mut a, mut c) = (row.clone(), row);
        softmax(&mut a);
        softmax_body(&mut c);
        for (x, y) in a.iter().zip(&c) {
            assert!((x - y).abs() <= 1e-7, "{x} {y}");
        }
        assert!((a.iter().sum::<f32>() - 1.0).abs() < 1e-5);
    }
}
