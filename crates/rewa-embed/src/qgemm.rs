//! int8 matrix products for the int8 forward pass (`--precision int8`).
//!
//! Weights are quantized once, at load, per output channel and symmetric (`w ~ s_o * q`,
//! `q` in -127..=127); activations per row (one token's features) on the fly, asymmetric
//! (`x ~ s_r * u + z_r`, `u` in 0..=255 over the row's own min..max: a GELU output, which is
//! never below -0.17, gets twice the resolution a symmetric code would give it). The product
//! of a row and a channel is then `s_r s_o sum(u q) + z_r s_o sum(q)` plus the bias; the first
//! sum is the exact integer dot product of the codes, the second is kept per channel. Three
//! kernels compute that integer exactly, so they agree to the bit (tested):
//!
//! - **AVX-512 VNNI** (`vpdpbusd`: 64 products of unsigned by signed bytes summed into 16
//!   `i32` per instruction).
//! - **AVX2** (`vpmaddwd`: 16 products of `i16`, summed in pairs into 8 `i32`). The faster
//!   looking `vpmaddubsw` (unsigned times signed bytes into saturating `i16` pairs) would clip
//!   `2 * 255 * 127`; ONNX Runtime avoids that with 7-bit weights (`reduce_range`). Sign-extended
//!   to `i16` the products are exact, and on the multiply ports they cost the same: two
//!   multiplies per 32 products either way.
//! - **Scalar**, the reference: a plain loop over the unpacked codes.
//!
//! The weights are packed for the kernel the CPU will run ([`level`]): 16 (VNNI) or 8 (AVX2)
//! output channels side by side, 4 or 2 consecutive inputs of each channel together, so a
//! register load holds one slice of several channels and one broadcast of a row's 4 (or 2)
//! codes feeds them all. A tile of rows (8 or 6) against two such blocks is kept in registers
//! across the whole input dimension; the channels are walked in chunks whose packed weights
//! stay in the L2 cache while every tile of rows passes over them.

use std::sync::OnceLock;

/// Which kernel the int8 products run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Level {
    /// Plain Rust on unpacked codes (any CPU; the twin the others are tested against).
    Scalar,
    /// `vpmaddwd` on sign-extended codes (AVX2).
    Avx2,
    /// `vpdpbusd` (AVX-512 F, BW and VNNI).
    Vnni,
}

impl Level {
    /// Name for reports.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Level::Scalar => "scalar",
            Level::Avx2 => "avx2",
            Level::Vnni => "avx512-vnni",
        }
    }
}

/// The fastest level the CPU has: VNNI unless `REWA_NO_AVX512` is set, AVX2 unless
/// `REWA_NO_AVX2` is set (then scalar).
pub(crate) fn level() -> Level {
    static L: OnceLock<Level> = OnceLock::new();
    *L.get_or_init(|| {
        let no512 = std::env::var_os("REWA_NO_AVX512").is_some_and(|v| !v.is_empty() && v != "0");
        if !rewa::simd::avx2() {
            Level::Scalar
        } else if !no512 && supported(Level::Vnni) {
            Level::Vnni
        } else {
            Level::Avx2
        }
    })
}

/// Whether this CPU can run `l` (whatever the environment asks for).
pub(crate) fn supported(l: Level) -> bool {
    match l {
        Level::Scalar => true,
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 => is_x86_feature_detected!("avx2"),
        #[cfg(target_arch = "x86_64")]
        Level::Vnni => {
            is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vnni")
        }
        #[cfg(not(target_arch = "x86_64"))]
        _ => false,
    }
}

/// Channels per packed block and inputs per group, by level.
fn block(l: Level) -> (usize, usize) {
    match l {
        Level::Scalar => (1, 1),
        Level::Avx2 => (8, 2),
        Level::Vnni => (16, 4),
    }
}

/// The inputs rounded up to a multiple of 4 (every level's codes are padded with zeros to it).
fn padded(k: usize) -> usize {
    k.div_ceil(4) * 4
}

/// The symmetric code of `x` at `inv = 127 / max|x|`: `x * inv` rounded to nearest, ties to
/// even, kept in -127..=127 (integer arithmetic on the float's bits, so loops vectorise).
#[inline(always)]
fn code(x: f32, inv: f32) -> i8 {
    (crate::kernels::int_of(x * inv) as i32).clamp(-127, 127) as i8
}

/// A weight matrix (`n_out x k`, row-major as stored) as int8 codes, packed for one level.
pub(crate) struct QMatrix {
    n_out: usize,
    k: usize,
    level: Level,
    /// Per channel, padded with zeros to whole pairs of blocks.
    scale: Vec<f32>,
    /// `scale * sum(q)` per channel (what a row's zero point is multiplied by), padded like
    /// `scale`.
    wsum: Vec<f32>,
    /// Scalar: `n_out x kp` codes. VNNI: blocks of 16 channels, `[kp / 4][16][4]` each.
    bytes: Vec<i8>,
    /// AVX2: blocks of 8 channels, `[kp / 2][8][2]` each, sign-extended.
    words: Vec<i16>,
}

impl QMatrix {
    /// Quantizes `w` (`n_out x k`) per output channel for the kernels of `level`.
    pub(crate) fn new(w: &[f32], n_out: usize, k: usize, level: Level) -> QMatrix {
        assert_eq!(w.len(), n_out * k, "weights are n_out x k");
        let kp = padded(k);
        let (cb, _) = block(level);
        let np = n_out.div_ceil(2 * cb) * 2 * cb;
        let mut q = vec![0i8; np * kp];
        let mut scale = vec![0f32; np];
        let mut wsum = vec![0f32; np];
        for o in 0..n_out {
            let row = &w[o * k..(o + 1) * k];
            let m = row.iter().fold(0f32, |a, &x| a.max(x.abs()));
            if m > 0.0 {
                let inv = 127.0 / m;
                scale[o] = m / 127.0;
                let dst = &mut q[o * kp..o * kp + k];
                for (d, &x) in dst.iter_mut().zip(row) {
                    *d = code(x, inv);
                }
                wsum[o] = scale[o] * dst.iter().map(|&c| c as f32).sum::<f32>();
            }
        }
        let (mut bytes, mut words) = (Vec::new(), Vec::new());
        match level {
            Level::Scalar => {
                q.truncate(n_out * kp);
                bytes = q;
            }
            Level::Avx2 => {
                words = vec![0i16; np * kp];
                for o in 0..np {
                    let (b, c) = (o / 8, o % 8);
                    for j in 0..kp {
                        words[((b * (kp / 2) + j / 2) * 8 + c) * 2 + j % 2] =
                            i16::from(q[o * kp + j]);
                    }
                }
            }
            Level::Vnni => {
                bytes = vec![0i8; np * kp];
                for o in 0..np {
                    let (b, c) = (o / 16, o % 16);
                    for j in 0..kp {
                        bytes[((b * (kp / 4) + j / 4) * 16 + c) * 4 + j % 4] = q[o * kp + j];
                    }
                }
            }
        }
        QMatrix {
            n_out,
            k,
            level,
            scale,
            wsum,
            bytes,
            words,
        }
    }

    /// The kernel level the codes are packed for.
    pub(crate) fn level(&self) -> Level {
        self.level
    }
}

/// Rows of activations as 8-bit codes with a scale and a zero point per row, laid out for one
/// level.
#[derive(Default)]
pub(crate) struct QRows {
    rows: usize,
    kp: usize,
    scale: Vec<f32>,
    zero: Vec<f32>,
    /// Scalar and VNNI: the codes, `rows x kp`.
    bytes: Vec<u8>,
    /// AVX2: the codes widened to `i16`.
    words: Vec<i16>,
}

impl QRows {
    /// Quantizes `rows x k` activations (row-major) per row, reusing this buffer.
    pub(crate) fn quantize(&mut self, x: &[f32], rows: usize, k: usize, level: Level) {
        let kp = padded(k);
        self.rows = rows;
        self.kp = kp;
        self.scale.clear();
        self.scale.resize(rows, 0.0);
        self.zero.clear();
        self.zero.resize(rows, 0.0);
        self.bytes.clear();
        self.bytes.resize(rows * kp, 0);
        for r in 0..rows {
            let xr = &x[r * k..(r + 1) * k];
            let (s, z) = quantize_row(xr, &mut self.bytes[r * kp..r * kp + k]);
            self.scale[r] = s;
            self.zero[r] = z;
        }
        if level == Level::Avx2 {
            self.words.clear();
            self.words.extend(self.bytes.iter().map(|&b| i16::from(b)));
        }
    }
}

/// `codes = round((x - min) * 255 / (max - min))`, returning `(scale, zero) = ((max - min) /
/// 255, min)`; a constant row gets scale 0 and zero its value, a row holding a NaN or an
/// infinity (0, 0). With AVX2, 32 values a step (`cvtps2dq` rounds to nearest even, the
/// saturating packs clamp); the plain loop is its twin.
fn quantize_row(x: &[f32], codes: &mut [u8]) -> (f32, f32) {
    #[cfg(target_arch = "x86_64")]
    if rewa::simd::avx2() {
        // SAFETY: the CPU has AVX2 (checked).
        return unsafe { x86::quantize_row_avx2(x, codes) };
    }
    let mut sz = (0f32, 0f32);
    quantize_row_body(x, codes, &mut sz);
    sz
}

#[inline(always)]
fn quantize_row_body(x: &[f32], codes: &mut [u8], sz: &mut (f32, f32)) {
    const L: usize = 8;
    let (mut lo, mut hi) = ([f32::INFINITY; L], [f32::NEG_INFINITY; L]);
    // NaN poisons this sum (and an infinity makes it NaN), where min and max would skip it
    let mut poison = [0f32; L];
    let mut chunks = x.chunks_exact(L);
    for c in &mut chunks {
        for j in 0..L {
            lo[j] = if c[j] < lo[j] { c[j] } else { lo[j] };
            hi[j] = if c[j] > hi[j] { c[j] } else { hi[j] };
            poison[j] += c[j] * 0.0;
        }
    }
    let (mut min, mut max, mut bad) = (f32::INFINITY, f32::NEG_INFINITY, 0f32);
    for &v in chunks.remainder() {
        min = if v < min { v } else { min };
        max = if v > max { v } else { max };
        bad += v * 0.0;
    }
    for j in 0..L {
        min = if lo[j] < min { lo[j] } else { min };
        max = if hi[j] > max { hi[j] } else { max };
        bad += poison[j];
    }
    if bad != 0.0 || !min.is_finite() || !max.is_finite() {
        codes.fill(0);
        *sz = (0.0, 0.0);
    } else if max > min {
        let inv = 255.0 / (max - min);
        for (d, &v) in codes.iter_mut().zip(x) {
            *d = (crate::kernels::int_of((v - min) * inv) as i32).clamp(0, 255) as u8;
        }
        *sz = ((max - min) / 255.0, min);
    } else {
        codes.fill(0);
        *sz = (0.0, min);
    }
}

/// `out (rows x n_out) = dequantized(a) * dequantized(w)^T (+ bias)`, on `w`'s level (which
/// `a` must have been quantized for).
pub(crate) fn gemm(a: &QRows, w: &QMatrix, bias: Option<&[f32]>, out: &mut [f32]) {
    assert_eq!(a.kp, padded(w.k), "activations and weights differ in width");
    assert!(out.len() >= a.rows * w.n_out);
    if let Some(b) = bias {
        assert!(b.len() >= w.n_out);
    }
    match w.level {
        Level::Scalar => gemm_scalar(a, w, bias, out),
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 => {
            assert!(supported(Level::Avx2) && a.words.len() >= a.rows * a.kp);
            // SAFETY: the CPU has AVX2 (checked); the buffers hold what the sizes say
            // (asserted here and by construction).
            unsafe { x86::gemm_avx2(a, w, bias, out) }
        }
        #[cfg(target_arch = "x86_64")]
        Level::Vnni => {
            assert!(supported(Level::Vnni) && a.bytes.len() >= a.rows * a.kp);
            // SAFETY: as above, for AVX-512 F, BW and VNNI.
            unsafe { x86::gemm_vnni(a, w, bias, out) }
        }
        #[cfg(not(target_arch = "x86_64"))]
        _ => unreachable!("only the scalar level exists off x86-64"),
    }
}

/// The reference: exact integer dot products, then `acc * (s_r * s_o) + z_r * wsum_o + b`,
/// the same float operations in the same order as the SIMD epilogues.
fn gemm_scalar(a: &QRows, w: &QMatrix, bias: Option<&[f32]>, out: &mut [f32]) {
    let (kp, n) = (a.kp, w.n_out);
    for r in 0..a.rows {
        let ar = &a.bytes[r * kp..(r + 1) * kp];
        for o in 0..n {
            let wr = &w.bytes[o * kp..(o + 1) * kp];
            let acc: i32 = ar
                .iter()
                .zip(wr)
                .map(|(&x, &y)| i32::from(x) * i32::from(y))
                .sum();
            let mut v = acc as f32 * (a.scale[r] * w.scale[o]);
            v += a.zero[r] * w.wsum[o];
            if let Some(b) = bias {
                v += b[o];
            }
            out[r * n + o] = v;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{QMatrix, QRows};
    use std::arch::x86_64::*;

    /// [`super::quantize_row`] on AVX2.
    ///
    /// # Safety
    /// The CPU has AVX2.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn quantize_row_avx2(x: &[f32], codes: &mut [u8]) -> (f32, f32) {
        assert!(codes.len() >= x.len());
        let n = x.len();
        let p = x.as_ptr();
        let (mut lo, mut hi) = (
            _mm256_set1_ps(f32::INFINITY),
            _mm256_set1_ps(f32::NEG_INFINITY),
        );
        let (mut bad, zero) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut i = 0;
        // SAFETY: every load is of 8 values at i + 8 <= n.
        unsafe {
            while i + 8 <= n {
                let v = _mm256_loadu_ps(p.add(i));
                lo = _mm256_min_ps(lo, v);
                hi = _mm256_max_ps(hi, v);
                bad = _mm256_add_ps(bad, _mm256_mul_ps(v, zero));
                i += 8;
            }
        }
        let (mut l, mut h, mut b) = ([0f32; 8], [0f32; 8], [0f32; 8]);
        // SAFETY: stores of 8 values into arrays of 8.
        unsafe {
            _mm256_storeu_ps(l.as_mut_ptr(), lo);
            _mm256_storeu_ps(h.as_mut_ptr(), hi);
            _mm256_storeu_ps(b.as_mut_ptr(), bad);
        }
        let (mut min, mut max, mut poison) = (f32::INFINITY, f32::NEG_INFINITY, 0f32);
        for j in 0..8 {
            min = if l[j] < min { l[j] } else { min };
            max = if h[j] > max { h[j] } else { max };
            poison += b[j];
        }
        for &v in &x[i..] {
            min = if v < min { v } else { min };
            max = if v > max { v } else { max };
            poison += v * 0.0;
        }
        if poison != 0.0 || !min.is_finite() || !max.is_finite() {
            codes[..n].fill(0);
            return (0.0, 0.0);
        }
        if max <= min {
            codes[..n].fill(0);
            return (0.0, min);
        }
        let inv = 255.0 / (max - min);
        let (vmin, vinv) = (_mm256_set1_ps(min), _mm256_set1_ps(inv));
        let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        let mut i = 0;
        // SAFETY: loads of 32 values at i + 32 <= n, a store of 32 codes there.
        unsafe {
            let q = |at: usize| {
                let v = _mm256_loadu_ps(p.add(at));
                _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_sub_ps(v, vmin), vinv))
            };
            while i + 32 <= n {
                let ab = _mm256_packus_epi32(q(i), q(i + 8));
                let cd = _mm256_packus_epi32(q(i + 16), q(i + 24));
                let bytes = _mm256_permutevar8x32_epi32(_mm256_packus_epi16(ab, cd), order);
                _mm256_storeu_si256(codes.as_mut_ptr().add(i) as *mut __m256i, bytes);
                i += 32;
            }
        }
        for (d, &v) in codes[i..n].iter_mut().zip(&x[i..]) {
            *d = (crate::kernels::int_of((v - min) * inv) as i32).clamp(0, 255) as u8;
        }
        ((max - min) / 255.0, min)
    }

    /// Pairs of channel blocks whose packed weights take about this many bytes are walked
    /// together (they stay in L2 while every tile of rows passes).
    const CHUNK_BYTES: usize = 192 * 1024;

    /// The VNNI kernel over every tile: 8 rows by 32 channels.
    ///
    /// # Safety
    /// The CPU has AVX-512 F, BW and VNNI; the buffers hold what their sizes say.
    pub(super) unsafe fn gemm_vnni(a: &QRows, w: &QMatrix, bias: Option<&[f32]>, out: &mut [f32]) {
        tiles(a, w, bias, 8, 32, &mut |t, m| {
            // SAFETY: the caller's contract; rows r..r+m and channels col..col+32 are inside
            // the padded buffers.
            unsafe {
                match m {
                    8 => vnni_tile::<8>(t, out),
                    7 => vnni_tile::<7>(t, out),
                    6 => vnni_tile::<6>(t, out),
                    5 => vnni_tile::<5>(t, out),
                    4 => vnni_tile::<4>(t, out),
                    3 => vnni_tile::<3>(t, out),
                    2 => vnni_tile::<2>(t, out),
                    _ => vnni_tile::<1>(t, out),
                }
            }
        });
    }

    /// Walks the tiles of `mr` rows by `cols` channels (two packed blocks): the channels in
    /// chunks whose packed weights stay in L2 while every tile of rows passes over them.
    fn tiles<'a>(
        a: &'a QRows,
        w: &'a QMatrix,
        bias: Option<&'a [f32]>,
        mr: usize,
        cols: usize,
        tile: &mut dyn FnMut(Tile<'a>, usize),
    ) {
        let pairs = w.scale.len() / cols;
        let chunk = (CHUNK_BYTES / (32 * a.kp)).max(1);
        crate::fgemm::walk_tiles(a.rows, pairs, chunk, mr, &mut |r, p, m| {
            let col = p * cols;
            tile(Tile { a, w, bias, r, col }, m);
        });
    }

    #[derive(Clone, Copy)]
    struct Tile<'a> {
        a: &'a QRows,
        w: &'a QMatrix,
        bias: Option<&'a [f32]>,
        /// First row.
        r: usize,
        /// First channel (a multiple of two blocks).
        col: usize,
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn vnni_tile<const R: usize>(t: Tile<'_>, out: &mut [f32]) {
        // SAFETY: the caller runs this on a CPU with the enabled features, for rows and
        // channels inside the padded buffers (gemm asserts the sizes).
        unsafe {
            let kp = t.a.kp;
            let ap = t.a.bytes.as_ptr().add(t.r * kp);
            let b0p = t.w.bytes.as_ptr().add(t.col * kp);
            let b1p = b0p.add(16 * kp);
            let mut acc0 = [_mm512_setzero_si512(); R];
            let mut acc1 = [_mm512_setzero_si512(); R];
            for q in 0..kp / 4 {
                let b0 = _mm512_loadu_si512(b0p.add(q * 64) as *const _);
                let b1 = _mm512_loadu_si512(b1p.add(q * 64) as *const _);
                for i in 0..R {
                    let av =
                        _mm512_set1_epi32((ap.add(i * kp + q * 4) as *const i32).read_unaligned());
                    acc0[i] = _mm512_dpbusd_epi32(acc0[i], av, b0);
                    acc1[i] = _mm512_dpbusd_epi32(acc1[i], av, b1);
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
                let ws = _mm512_loadu_ps(t.w.wsum.as_ptr().add(c0));
                let sw = _mm512_loadu_ps(t.w.scale.as_ptr().add(c0));
                let bias = t
                    .bias
                    .map(|b| _mm512_maskz_loadu_ps(mask, b.as_ptr().add(c0)));
                for (i, &v) in acc.iter().enumerate() {
                    let s = _mm512_mul_ps(_mm512_set1_ps(t.a.scale[t.r + i]), sw);
                    let mut f = _mm512_mul_ps(_mm512_cvtepi32_ps(v), s);
                    f = _mm512_add_ps(f, _mm512_mul_ps(_mm512_set1_ps(t.a.zero[t.r + i]), ws));
                    if let Some(b) = bias {
                        f = _mm512_add_ps(f, b);
                    }
                    _mm512_mask_storeu_ps(out.as_mut_ptr().add((t.r + i) * n + c0), mask, f);
                }
            }
        }
    }

    /// The AVX2 kernel over every tile: 6 rows by 16 channels.
    ///
    /// # Safety
    /// The CPU has AVX2; the buffers hold what their sizes say.
    pub(super) unsafe fn gemm_avx2(a: &QRows, w: &QMatrix, bias: Option<&[f32]>, out: &mut [f32]) {
        tiles(a, w, bias, 6, 16, &mut |t, m| {
            // SAFETY: as in gemm_vnni.
            unsafe {
                match m {
                    6 => avx2_tile::<6>(t, out),
                    5 => avx2_tile::<5>(t, out),
                    4 => avx2_tile::<4>(t, out),
                    3 => avx2_tile::<3>(t, out),
                    2 => avx2_tile::<2>(t, out),
                    _ => avx2_tile::<1>(t, out),
                }
            }
        });
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn avx2_tile<const R: usize>(t: Tile<'_>, out: &mut [f32]) {
        // SAFETY: the caller runs this on a CPU with the enabled features, for rows and
        // channels inside the padded buffers (gemm asserts the sizes).
        unsafe {
            let kp = t.a.kp;
            let ap = t.a.words.as_ptr().add(t.r * kp);
            let b0p = t.w.words.as_ptr().add(t.col * kp);
            let b1p = b0p.add(8 * kp);
            let mut acc0 = [_mm256_setzero_si256(); R];
            let mut acc1 = [_mm256_setzero_si256(); R];
            for j in 0..kp / 2 {
                let b0 = _mm256_loadu_si256(b0p.add(j * 16) as *const _);
                let b1 = _mm256_loadu_si256(b1p.add(j * 16) as *const _);
                for i in 0..R {
                    let av =
                        _mm256_set1_epi32((ap.add(i * kp + j * 2) as *const i32).read_unaligned());
                    acc0[i] = _mm256_add_epi32(acc0[i], _mm256_madd_epi16(av, b0));
                    acc1[i] = _mm256_add_epi32(acc1[i], _mm256_madd_epi16(av, b1));
                }
            }
            let n = t.w.n_out;
            for (half, acc) in [acc0, acc1].iter().enumerate() {
                let c0 = t.col + 8 * half;
                if c0 >= n {
                    break;
                }
                let cnt = (n - c0).min(8);
                let sw = _mm256_loadu_ps(t.w.scale.as_ptr().add(c0));
                let ws = _mm256_loadu_ps(t.w.wsum.as_ptr().add(c0));
                let mut b = [0f32; 8];
                if let Some(bias) = t.bias {
                    b[..cnt].copy_from_slice(&bias[c0..c0 + cnt]);
                }
                let bv = _mm256_loadu_ps(b.as_ptr());
                for (i, &v) in acc.iter().enumerate() {
                    let s = _mm256_mul_ps(_mm256_set1_ps(t.a.scale[t.r + i]), sw);
                    let mut f = _mm256_mul_ps(_mm256_cvtepi32_ps(v), s);
                    f = _mm256_add_ps(f, _mm256_mul_ps(_mm256_set1_ps(t.a.zero[t.r + i]), ws));
                    if t.bias.is_some() {
                        f = _mm256_add_ps(f, bv);
                    }
                    let dst = out.as_mut_ptr().add((t.r + i) * n + c0);
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
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 4.0
            })
            .collect()
    }

    fn run(
        level: Level,
        x: &[f32],
        rows: usize,
        w: &[f32],
        n: usize,
        k: usize,
        b: Option<&[f32]>,
    ) -> Vec<f32> {
        let qm = QMatrix::new(w, n, k, level);
        let mut qr = QRows::default();
        qr.quantize(x, rows, k, level);
        let mut out = vec![f32::NAN; rows * n];
        gemm(&qr, &qm, b, &mut out);
        out
    }

    /// Every kernel the CPU has computes what the scalar twin computes, to the bit, over
    /// ragged shapes (rows not a multiple of the tile, channels not of the block, inputs not
    /// of 4), with and without a bias; and all of it approximates the f32 product.
    #[test]
    fn kernels_equal_the_scalar_twin() {
        let mut checked = Vec::new();
        for level in [Level::Avx2, Level::Vnni] {
            if !supported(level) {
                continue;
            }
            checked.push(level.name());
            for &(rows, k, n) in &[
                (1, 4, 1),
                (5, 7, 15),
                (8, 64, 16),
                (13, 385, 33),
                (37, 384, 100),
                (9, 1536, 70),
                (17, 3, 64),
            ] {
                let x = data(rows * k, (rows * 31 + k) as u64);
                let w = data(n * k, (n * 7 + k) as u64);
                let b = data(n, 99);
                for bias in [None, Some(b.as_slice())] {
                    let want = run(Level::Scalar, &x, rows, &w, n, k, bias);
                    let got = run(level, &x, rows, &w, n, k, bias);
                    assert_eq!(got.len(), want.len());
                    for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                        assert_eq!(
                            g.to_bits(),
                            e.to_bits(),
                            "{level:?} {rows}x{k}x{n} at {i}: {g} vs {e}"
                        );
                    }
                }
            }
        }
        eprintln!("int8 kernels checked against the scalar twin: {checked:?}");
    }

    #[test]
    fn row_quantization_twins_agree_and_handle_edges() {
        for (i, n) in [1usize, 7, 8, 33, 384, 1536].into_iter().enumerate() {
            let x = data(n, 40 + i as u64);
            let (mut a, mut b) = (vec![0u8; n], vec![0u8; n]);
            let mut sb = (0f32, 0f32);
            let sa = quantize_row(&x, &mut a);
            quantize_row_body(&x, &mut b, &mut sb);
            assert_eq!((a.clone(), sa), (b, sb));
            // every value is within half a step of its code's value
            for (&v, &c) in x.iter().zip(&a) {
                assert!(
                    (sa.0 * c as f32 + sa.1 - v).abs() <= sa.0 * 0.5001 + 1e-6,
                    "{v} {c}"
                );
            }
            if n > 1 {
                assert!(
                    a.contains(&0) && a.contains(&255),
                    "the row's ends get the ends"
                );
            }
        }
        let mut codes = vec![7u8; 3];
        assert_eq!(quantize_row(&[2.0, 2.0, 2.0], &mut codes), (0.0, 2.0));
        assert_eq!(codes, [0, 0, 0]);
        for bad in [f32::NAN, f32::INFINITY] {
            let mut x = data(20, 3);
            x[11] = bad;
            let mut codes = vec![7u8; 20];
            assert_eq!(quantize_row(&x, &mut codes), (0.0, 0.0));
            assert!(codes.iter().all(|&c| c == 0));
        }
    }

    #[test]
    fn products_approximate_f32() {
        let (rows, k, n) = (20, 384, 50);
        let x = data(rows * k, 1);
        let w = data(n * k, 2);
        let got = run(level(), &x, rows, &w, n, k, None);
        let mut want = vec![0f32; rows * n];
        rewa::linalg::gemm_abt(&x, &w, rows, k, n, &mut want);
        // each code is off by at most half a step of 1/127 of the row's (channel's) max; the
        // dot product of 384 such errors stays within a few percent of the typical magnitude
        let norm = (want.iter().map(|v| v * v).sum::<f32>() / want.len() as f32).sqrt();
        let err = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(err < 0.03 * norm, "max error {err} against rms {norm}");
        assert!(err > 0.0, "int8 cannot be exact on random data");
    }

    #[test]
    fn zero_rows_and_channels_give_zero_and_bias() {
        let (rows, k, n) = (3, 10, 5);
        let mut x = data(rows * k, 5);
        x[k..2 * k].fill(0.0);
        let mut w = data(n * k, 6);
        w[2 * k..3 * k].fill(0.0);
        let b = vec![0.5f32; n];
        for level in [Level::Scalar, Level::Avx2, Level::Vnni] {
            if !supported(level) {
                continue;
            }
            let out = run(level, &x, rows, &w, n, k, Some(&b));
            for o in 0..n {
                assert_eq!(out[n + o], 0.5, "{level:?}");
            }
            for r in 0..rows {
                assert_eq!(out[r * n + 2], 0.5, "{level:?}");
            }
        }
    }
}
