//! f32 linear layers with weights packed once, at load.
//!
//! A general GEMM (matrixmultiply) packs both operands on every call; for a linear layer the
//! weights never change, so packing them per call is work thrown away (13% of an f32 forward
//! pass here). This packs each weight matrix once into blocks of 16 (AVX-512) or 8 (AVX2)
//! output channels, input by input, and the kernel reads the activations as they lie:
//! a tile of rows (8 or 6) against two blocks is held in registers over the whole input
//! dimension, one broadcast of a row's input feeding a fused multiply-add per block; the bias
//! is added as the tile is stored.
//!
//! Every kernel sums each output in input order with fused multiply-adds, so the AVX-512 and
//! AVX2 kernels and the scalar twin (`f32::mul_add` in the same order) agree to the bit
//! (tested). Without AVX2 the layers run on matrixmultiply, as before.

use std::sync::OnceLock;

/// Which kernel the f32 layers run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Level {
    /// matrixmultiply on unpacked weights (no AVX2).
    Baseline,
    /// 6 rows x 16 channels, `vfmadd` on ymm registers.
    Avx2,
    /// 8 rows x 32 channels, `vfmadd` on zmm registers.
    Avx512,
}

/// The fastest level the CPU has (`REWA_NO_AVX512=1`, `REWA_NO_AVX2=1` step down).
pub(crate) fn level() -> Level {
    static L: OnceLock<Level> = OnceLock::new();
    *L.get_or_init(|| {
        let no512 = std::env::var_os("REWA_NO_AVX512").is_some_and(|v| !v.is_empty() && v != "0");
        if !rewa::simd::avx2() {
            Level::Baseline
        } else if !no512 && supported(Level::Avx512) {
            Level::Avx512
        } else {
            Level::Avx2
        }
    })
}

/// Whether this CPU can run `l`.
pub(crate) fn supported(l: Level) -> bool {
    match l {
        Level::Baseline => true,
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
        #[cfg(target_arch = "x86_64")]
        Level::Avx512 => is_x86_feature_detected!("avx512f"),
        #[cfg(not(target_arch = "x86_64"))]
        _ => false,
    }
}

/// Channels per packed block.
fn block(l: Level) -> usize {
    match l {
        Level::Baseline => 1,
        Level::Avx2 => 8,
        Level::Avx512 => 16,
    }
}

/// A weight matrix (`n_out x k`, row-major as stored), packed for one level.
pub(crate) struct Packed {
    n_out: usize,
    k: usize,
    level: Level,
    /// Baseline: the weights as given. Otherwise blocks of `block` channels, `[k][block]`
    /// each, the channels padded with zeros to whole pairs of blocks.
    w: Vec<f32>,
}

impl Packed {
    /// Packs `w` (`n_out x k`) for `level`.
    pub(crate) fn new(w: Vec<f32>, n_out: usize, k: usize, level: Level) -> Packed {
        assert_eq!(w.len(), n_out * k, "weights are n_out x k");
        if level == Level::Baseline {
            return Packed { n_out, k, level, w };
        }
        let cb = block(level);
        let np = n_out.div_ceil(2 * cb) * 2 * cb;
        let mut p = vec![0f32; np * k];
        for o in 0..n_out {
            let (b, c) = (o / cb, o % cb);
            for j in 0..k {
                p[(b * k + j) * cb + c] = w[o * k + j];
            }
        }
        Packed {
            n_out,
            k,
            level,
            w: p,
        }
    }

    /// An empty matrix, to be filled by [`Packed::pack_columns`].
    pub(crate) fn empty(level: Level) -> Packed {
        Packed {
            n_out: 0,
            k: 0,
            level,
            w: Vec::new(),
        }
    }

    /// Packs the matrix whose channel `o` is column `o` of `k` rows of `src` (row `j` at
    /// `j * stride`, `n_out` wide): attention's values, `V^T`, reusing this buffer.
    pub(crate) fn pack_columns(&mut self, src: &[f32], stride: usize, k: usize, n_out: usize) {
        self.n_out = n_out;
        self.k = k;
        self.w.clear();
        if self.level == Level::Baseline {
            self.w.resize(n_out * k, 0.0);
            for j in 0..k {
                for o in 0..n_out {
                    self.w[o * k + j] = src[j * stride + o];
                }
            }
            return;
        }
        let cb = block(self.level);
        let np = n_out.div_ceil(2 * cb) * 2 * cb;
        self.w.resize(np * k, 0.0);
        for b in 0..n_out.div_ceil(cb) {
            let width = (n_out - b * cb).min(cb);
            for j in 0..k {
                let from = &src[j * stride + b * cb..][..width];
                self.w[(b * k + j) * cb..][..width].copy_from_slice(from);
            }
        }
    }
}

/// `out (rows x n_out) = x (rows x k) W^T (+ bias)`.
pub(crate) fn linear(x: &[f32], rows: usize, w: &Packed, bias: Option<&[f32]>, out: &mut [f32]) {
    let (xs, os) = (w.k, w.n_out);
    gemm(
        Rows { x, stride: xs },
        rows,
        w,
        bias,
        Rows { x: out, stride: os },
    )
}

/// Rows of a matrix: row `i` at `i * stride`.
pub(crate) struct Rows<T> {
    pub(crate) x: T,
    pub(crate) stride: usize,
}

/// `out = x W^T (+ bias)` over `rows` rows, each operand's rows at its own stride.
pub(crate) fn gemm(
    x: Rows<&[f32]>,
    rows: usize,
    w: &Packed,
    bias: Option<&[f32]>,
    out: Rows<&mut [f32]>,
) {
    let (k, n) = (w.k, w.n_out);
    if rows == 0 || n == 0 {
        return;
    }
    assert!(x.stride >= k && out.stride >= n);
    assert!(x.x.len() >= (rows - 1) * x.stride + k);
    assert!(out.x.len() >= (rows - 1) * out.stride + n);
    if let Some(b) = bias {
        assert!(b.len() >= n);
    }
    match w.level {
        Level::Baseline => {
            // SAFETY: the asserts above keep every index the strides describe inside the
            // buffers.
            unsafe {
                matrixmultiply::sgemm(
                    rows,
                    k,
                    n,
                    1.0,
                    x.x.as_ptr(),
                    x.stride as isize,
                    1,
                    w.w.as_ptr(),
                    1,
                    k as isize,
                    0.0,
                    out.x.as_mut_ptr(),
                    out.stride as isize,
                    1,
                );
            }
            if let Some(b) = bias {
                for r in 0..rows {
                    let o = &mut out.x[r * out.stride..][..n];
                    o.iter_mut().zip(b).for_each(|(v, b)| *v += b);
                }
            }
        }
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 => {
            assert!(supported(Level::Avx2));
            // SAFETY: the CPU has AVX2 and FMA (checked); sizes asserted above, the packed
            // weights padded to whole pairs of blocks by construction.
            unsafe { x86::gemm_avx2(x, rows, w, bias, out) }
        }
        #[cfg(target_arch = "x86_64")]
        Level::Avx512 => {
            assert!(supported(Level::Avx512));
            // SAFETY: as above, for AVX-512 F.
            unsafe { x86::gemm_avx512(x, rows, w, bias, out) }
        }
        #[cfg(not(target_arch = "x86_64"))]
        _ => unreachable!("only the baseline exists off x86-64"),
    }
}

/// The order the tiled kernels (here and in `qgemm`) visit their tiles: the pairs of channel
/// blocks in chunks of `chunk` (whose packed weights stay in L2), every tile of `mr` rows over
/// each chunk; `visit(first row, pair, rows in the tile)`.
#[cfg(target_arch = "x86_64")]
pub(crate) fn walk_tiles(
    rows: usize,
    pairs: usize,
    chunk: usize,
    mr: usize,
    visit: &mut dyn FnMut(usize, usize, usize),
) {
    let mut p0 = 0;
    while p0 < pairs {
        let p1 = (p0 + chunk).min(pairs);
        let mut r = 0;
        while r < rows {
            let m = (rows - r).min(mr);
            for p in p0..p1 {
                visit(r, p, m);
            }
            r += m;
        }
        p0 = p1;
    }
}

/// The twin: each output summed in input order with `mul_add`, as the kernels do.
#[cfg(test)]
fn linear_twin(
    x: &[f32],
    rows: usize,
    w: &[f32],
    n: usize,
    k: usize,
    bias: Option<&[f32]>,
) -> Vec<f32> {
    let mut out = vec![0f32; rows * n];
    for r in 0..rows {
        for o in 0..n {
            let mut acc = 0f32;
            for j in 0..k {
                acc = x[r * k + j].mul_add(w[o * k + j], acc);
            }
            out[r * n + o] = match bias {
                Some(b) => acc + b[o],
                None => acc,
            };
        }
    }
    out
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Packed, Rows};
    use std::arch::x86_64::*;

    /// Pairs of blocks whose packed weights take about this many bytes are walked together
    /// (they stay in L2 while every tile of rows passes).
    const CHUNK_BYTES: usize = 256 * 1024;

    #[derive(Clone, Copy)]
    struct Tile<'a> {
        x: &'a [f32],
        /// Row stride of `x`, and of the output.
        xs: usize,
        os: usize,
        w: &'a Packed,
        bias: Option<&'a [f32]>,
        r: usize,
        col: usize,
    }

    #[allow(clippy::too_many_arguments)]
    fn tiles<'a>(
        x: &'a [f32],
        xs: usize,
        os: usize,
        rows: usize,
        w: &'a Packed,
        bias: Option<&'a [f32]>,
        mr: usize,
        cols: usize,
        tile: &mut dyn FnMut(Tile<'a>, usize),
    ) {
        let pairs = w.w.len() / (cols * w.k.max(1));
        let chunk = (CHUNK_BYTES / (4 * cols * w.k.max(1))).max(1);
        super::walk_tiles(rows, pairs, chunk, mr, &mut |r, p, m| {
            let col = p * cols;
            let t = Tile {
                x,
                xs,
                os,
                w,
                bias,
                r,
                col,
            };
            tile(t, m);
        });
    }

    /// # Safety
    /// The CPU has AVX-512 F; the buffers hold what their sizes say.
    pub(super) unsafe fn gemm_avx512(
        x: Rows<&[f32]>,
        rows: usize,
        w: &Packed,
        bias: Option<&[f32]>,
        out: Rows<&mut [f32]>,
    ) {
        let (os, out) = (out.stride, out.x);
        tiles(x.x, x.stride, os, rows, w, bias, 8, 32, &mut |t, m| {
            // SAFETY: the caller's contract; rows r..r+m and channels col..col+32 are inside
            // the buffers (the packed ones padded).
            unsafe {
                match m {
                    8 => tile512::<8>(t, out),
                    7 => tile512::<7>(t, out),
                    6 => tile512::<6>(t, out),
                    5 => tile512::<5>(t, out),
                    4 => tile512::<4>(t, out),
                    3 => tile512::<3>(t, out),
                    2 => tile512::<2>(t, out),
                    _ => tile512::<1>(t, out),
                }
            }
        });
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn tile512<const R: usize>(t: Tile<'_>, out: &mut [f32]) {
        let k = t.w.k;
        // SAFETY: see linear_avx512.
        unsafe {
            let xp = t.x.as_ptr().add(t.r * t.xs);
            let b0p = t.w.w.as_ptr().add(t.col * k);
            let b1p = b0p.add(16 * k);
            let mut acc0 = [_mm512_setzero_ps(); R];
            let mut acc1 = [_mm512_setzero_ps(); R];
            for j in 0..k {
                let b0 = _mm512_loadu_ps(b0p.add(j * 16));
                let b1 = _mm512_loadu_ps(b1p.add(j * 16));
                for i in 0..R {
                    let a = _mm512_set1_ps(*xp.add(i * t.xs + j));
                    acc0[i] = _mm512_fmadd_ps(a, b0, acc0[i]);
                    acc1[i] = _mm512_fmadd_ps(a, b1, acc1[i]);
                }
            }
            let n = t.w.n_out;
            for (half, acc) in [acc0, acc1].iter().enumerate() {
                let c0 = t.col + 16 * half;
                if c0 >= n {
                    break;
                }
                let cnt = (n - c0).min(16);
                let mask: __mmask16 = if cnt == 16 { !0 } else { (1u16 << cnt) - 1 };
                let b = t
                    .bias
                    .map(|b| _mm512_maskz_loadu_ps(mask, b.as_ptr().add(c0)));
                for (i, &v) in acc.iter().enumerate() {
                    let f = match b {
                        Some(b) => _mm512_add_ps(v, b),
                        None => v,
                    };
                    _mm512_mask_storeu_ps(out.as_mut_ptr().add((t.r + i) * t.os + c0), mask, f);
                }
            }
        }
    }

    /// # Safety
    /// The CPU has AVX2 and FMA; the buffers hold what their sizes say.
    pub(super) unsafe fn gemm_avx2(
        x: Rows<&[f32]>,
        rows: usize,
        w: &Packed,
        bias: Option<&[f32]>,
        out: Rows<&mut [f32]>,
    ) {
        let (os, out) = (out.stride, out.x);
        tiles(x.x, x.stride, os, rows, w, bias, 6, 16, &mut |t, m| {
            // SAFETY: as in linear_avx512.
            unsafe {
                match m {
                    6 => tile256::<6>(t, out),
                    5 => tile256::<5>(t, out),
                    4 => tile256::<4>(t, out),
                    3 => tile256::<3>(t, out),
                    2 => tile256::<2>(t, out),
                    _ => tile256::<1>(t, out),
                }
            }
        });
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn tile256<const R: usize>(t: Tile<'_>, out: &mut [f32]) {
        let k = t.w.k;
        // SAFETY: see linear_avx2.
        unsafe {
            let xp = t.x.as_ptr().add(t.r * t.xs);
            let b0p = t.w.w.as_ptr().add(t.col * k);
            let b1p = b0p.add(8 * k);
            let mut acc0 = [_mm256_setzero_ps(); R];
            let mut acc1 = [_mm256_setzero_ps(); R];
            for j in 0..k {
                let b0 = _mm256_loadu_ps(b0p.add(j * 8));
                let b1 = _mm256_loadu_ps(b1p.add(j * 8));
                for i in 0..R {
                    let a = _mm256_set1_ps(*xp.add(i * t.xs + j));
                    acc0[i] = _mm256_fmadd_ps(a, b0, acc0[i]);
                    acc1[i] = _mm256_fmadd_ps(a, b1, acc1[i]);
                }
            }
            let n = t.w.n_out;
            for (half, acc) in [acc0, acc1].iter().enumerate() {
                let c0 = t.col + 8 * half;
                if c0 >= n {
                    break;
                }
                let cnt = (n - c0).min(8);
                let mut b = [0f32; 8];
                if let Some(bias) = t.bias {
                    b[..cnt].copy_from_slice(&bias[c0..c0 + cnt]);
                }
                let bv = _mm256_loadu_ps(b.as_ptr());
                for (i, &v) in acc.iter().enumerate() {
                    let f = if t.bias.is_some() {
                        _mm256_add_ps(v, bv)
                    } else {
                        v
                    };
                    let dst = out.as_mut_ptr().add((t.r + i) * t.os + c0);
                    if cnt == 8 {
                        _mm256_storeu_ps(dst, f);
                    } else {
                        let mut tmp = [0f32; 8];
                        _mm256_storeu_ps(tmp.as_mut_ptr(), f);
                        std::ptr::copy_nonoverlapping(tmp.as_ptr(), dst, cnt);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0
            })
            .collect()
    }

    /// The SIMD kernels the CPU has equal the twin to the bit over ragged shapes; the
    /// baseline (matrixmultiply) is within rounding of it.
    #[test]
    fn kernels_equal_the_twin() {
        let mut checked = Vec::new();
        for level in [Level::Avx2, Level::Avx512, Level::Baseline] {
            if !supported(level) {
                continue;
            }
            checked.push(level);
            for &(rows, k, n) in &[
                (1, 1, 1),
                (5, 7, 15),
                (8, 64, 32),
                (13, 385, 33),
                (37, 384, 100),
                (9, 1536, 70),
            ] {
                let x = data(rows * k, (rows * 31 + k) as u64);
                let w = data(n * k, (n * 7 + k) as u64);
                let b = data(n, 5);
                for bias in [None, Some(b.as_slice())] {
                    let want = linear_twin(&x, rows, &w, n, k, bias);
                    let p = Packed::new(w.clone(), n, k, level);
                    let mut got = vec![f32::NAN; rows * n];
                    linear(&x, rows, &p, bias, &mut got);
                    for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                        if level == Level::Baseline {
                            assert!(
                                (g - e).abs() <= 1e-4 * (1.0 + e.abs()),
                                "{level:?} {rows}x{k}x{n} at {i}: {g} vs {e}"
                            );
                        } else {
                            assert_eq!(
                                g.to_bits(),
                                e.to_bits(),
                                "{level:?} {rows}x{k}x{n} at {i}: {g} vs {e}"
                            );
                        }
                    }
                }
            }
        }
        eprintln!("f32 kernels checked against the twin: {checked:?}");
    }

    /// Strided rows in and out, and weights packed from the columns of strided rows (how
    /// attention multiplies its scores by the values): the same as the plain product.
    #[test]
    fn strided_rows_and_packed_columns() {
        for level in [Level::Avx2, Level::Avx512, Level::Baseline] {
            if !supported(level) {
                continue;
            }
            for &(rows, k, n) in &[(1, 1, 1), (7, 33, 32), (13, 200, 64), (9, 17, 20)] {
                let (xs, vs, os) = (k + 3, n + 5, n + 2);
                let x = data(rows * xs, 9);
                let v = data(k * vs, 10); // k rows of n values (the weights' columns)
                let mut p = Packed::empty(level);
                p.pack_columns(&v, vs, k, n);
                let mut out = vec![-7f32; rows * os];
                gemm(
                    Rows { x: &x, stride: xs },
                    rows,
                    &p,
                    None,
                    Rows {
                        x: &mut out,
                        stride: os,
                    },
                );
                let wt: Vec<f32> = (0..n)
                    .flat_map(|o| (0..k).map(move |j| (o, j)))
                    .map(|(o, j)| v[j * vs + o])
                    .collect();
                let xc: Vec<f32> = (0..rows)
                    .flat_map(|r| x[r * xs..r * xs + k].to_vec())
                    .collect();
                let want = linear_twin(&xc, rows, &wt, n, k, None);
                for r in 0..rows {
                    for o in 0..n {
                        let (g, e) = (out[r * os + o], want[r * n + o]);
                        if level == Level::Baseline {
                            assert!((g - e).abs() <= 1e-4 * (1.0 + e.abs()), "{level:?} {g} {e}");
                        } else {
                            assert_eq!(
                                g.to_bits(),
                                e.to_bits(),
                                "{level:?} {rows}x{k}x{n} ({r},{o})"
                            );
                        }
                    }
                    assert!(
                        out[r * os + n..(r + 1) * os].iter().all(|&v| v == -7.0),
                        "stride gap untouched"
                    );
                }
            }
        }
    }
}
