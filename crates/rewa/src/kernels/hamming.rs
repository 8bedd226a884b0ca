//! Hamming first-stage scans of sign codes with the code length known at compile time
//! ([`scan_hamming`]): a scalar `popcnt` loop, the reference, and its AVX2 and AVX-512 twins
//! ([`HammingKernel`]), which give identical hits (tested here).

use super::query_block;
use crate::topk::{Allow, CountTop, Hit, TopK};
use rayon::prelude::*;

/// Population count of one word as a single scalar `POPCNT`.
///
/// With `count_ones`, LLVM's SLP vectorizer packs a code's words into one AVX2 register,
/// counts bits with byte shuffles and then needs a horizontal sum per code, which measured
/// slower than one scalar POPCNT per word (4 per cycle on current x86 cores). The asm keeps
/// it scalar. [`crate::distance::hamming_reference`] is the reference it is tested against
/// (through the generic code scan).
#[inline(always)]
fn popcnt64(x: u64) -> u32 {
    #[cfg(all(target_arch = "x86_64", target_feature = "popcnt"))]
    {
        let r: u64;
        // SAFETY: POPCNT is available (target feature checked at compile time); no memory access.
        unsafe {
            std::arch::asm!("popcnt {0}, {1}", out(reg) r, in(reg) x, options(pure, nomem, nostack))
        };
        r as u32
    }
    #[cfg(not(all(target_arch = "x86_64", target_feature = "popcnt")))]
    {
        x.count_ones()
    }
}

/// Hamming first-stage scan with the code length known at compile time (`W` u64 words):
/// the same result as the generic code scan (`scan_codes`) on a `SignQuantizer`, with the popcount loop unrolled.
///
/// The base is scanned a block at a time (128 KiB of codes, kept in cache while a group of
/// queries passes over it). On CPUs with AVX-512 VPOPCNTDQ each block is first copied
/// word-major (word w of 8 consecutive codes side by side) so that one instruction XORs and
/// counts one word of 8 codes, the counts add up vertically into 8 distances, and one
/// comparison with the current k-th distance tells which of the 8 may enter the top-k; the
/// scalar loop (one `popcnt` per word per code) is the reference twin and gives identical
/// results (tested).
pub fn scan_hamming<const W: usize>(queries: &[Vec<u8>], codes: &[u8], k: usize) -> Vec<Vec<Hit>> {
    scan_hamming_with::<W>(queries, codes, k, hamming_kernel(), Allow::ALL)
}

/// The fastest Hamming kernel this CPU has.
pub fn hamming_kernel() -> HammingKernel {
    if crate::simd::avx512_popcnt() {
        HammingKernel::Avx512
    } else if crate::simd::avx2() {
        HammingKernel::Avx2
    } else {
        HammingKernel::Scalar
    }
}

/// The kernels of [`scan_hamming`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HammingKernel {
    /// One scalar `popcnt` per word per code: the reference.
    Scalar,
    /// 8 codes per step, counted with `vpshufb` nibble lookups and `vpsadbw` (the CPU must
    /// have AVX2).
    Avx2,
    /// 8 codes per instruction with `vpopcntq` (the CPU must have AVX-512F and VPOPCNTDQ).
    Avx512,
}

/// [`scan_hamming`] with the kernel chosen by the caller (which the CPU must have), over the
/// rows `allow` allows.
pub fn scan_hamming_with<const W: usize>(
    queries: &[Vec<u8>],
    codes: &[u8],
    k: usize,
    kernel: HammingKernel,
    allow: Allow<'_>,
) -> Vec<Vec<Hit>> {
    let wide = kernel != HammingKernel::Scalar;
    let cl = W * 8;
    let n = codes.len() / cl;
    let k = k.min(n).max(1);
    let words = |c: &[u8]| -> [u64; W] {
        std::array::from_fn(|w| u64::from_le_bytes(c[w * 8..w * 8 + 8].try_into().unwrap()))
    };
    let block = ((128 << 10) / cl).max(16);
    let qb = query_block(queries.len());
    queries
        .par_chunks(qb)
        .flat_map_iter(|qs| {
            let qw: Vec<[u64; W]> = qs.iter().map(|q| words(q)).collect();
            let mut tops: Vec<CountTop> = qs
                .iter()
                .map(|_| CountTop::allowing(k, 64 * W as u32, allow))
                .collect();
            let mut tw: Vec<u64> = Vec::new();
            let mut dist: Vec<u16> = Vec::new();
            for (bi, bc) in codes.chunks(block * cl).enumerate() {
                let off = bi * block;
                let bn = bc.len() / cl;
                if wide {
                    transpose_words::<W>(bc, bn, &mut tw);
                }
                for (q, top) in qw.iter().zip(tops.iter_mut()) {
                    let done = match kernel {
                        #[cfg(target_arch = "x86_64")]
                        // SAFETY: the caller picks Avx512 only when the CPU has AVX-512F,
                        // VPOPCNTDQ and AVX2 (`simd::avx512_popcnt` checks all three).
                        HammingKernel::Avx512 => unsafe {
                            dist.resize(bn / 8 * 8, 0);
                            hamming_dists_avx512::<W>(q, bytemuck::cast_slice(&tw), &mut dist);
                            offer_below_avx2(top, &dist, off);
                            dist.len()
                        },
                        #[cfg(target_arch = "x86_64")]
                        // SAFETY: the caller picks Avx2 only when the CPU has AVX2.
                        HammingKernel::Avx2 => unsafe {
                            dist.resize(bn / 8 * 8, 0);
                            hamming_dists_avx2::<W>(q, bytemuck::cast_slice(&tw), &mut dist);
                            offer_below_avx2(top, &dist, off);
                            dist.len()
                        },
                        _ => 0,
                    };
                    // The reference loop (and the last bn % 8 codes of the wide one).
                    // Integer threshold; ids ascend, so a tie can never enter: strict `<`.
                    let mut thr = top.threshold();
                    for (j, c) in bc.chunks_exact(cl).enumerate().skip(done) {
                        let c = words(c);
                        let mut dist = 0u32;
                        for w in 0..W {
                            dist += popcnt64(q[w] ^ c[w]);
                        }
                        if dist < thr {
                            top.push((off + j) as u32, dist);
                            thr = top.threshold();
                        }
                    }
                }
            }
            tops.into_iter().map(CountTop::into_sorted)
        })
        .collect()
}

/// Copies the first `bn / 8 * 8` codes of `bc` word-major in groups of 8:
/// `tw[(g * W + w) * 8 + l]` is word w of code `8 g + l`.
fn transpose_words<const W: usize>(bc: &[u8], bn: usize, tw: &mut Vec<u64>) {
    let groups = bn / 8;
    tw.clear();
    tw.resize(groups * W * 8, 0);
    for g in 0..groups {
        for l in 0..8 {
            let c = &bc[(g * 8 + l) * W * 8..];
            for w in 0..W {
                tw[(g * W + w) * 8 + l] =
                    u64::from_le_bytes(c[w * 8..w * 8 + 8].try_into().unwrap());
            }
        }
    }
}

/// The wide twin of the reference loop in [`scan_hamming_with`], first half: the distances of
/// the first `dist.len()` codes of a block (a multiple of 8; `tw` from [`transpose_words`]),
/// with no branch: one instruction XORs and counts one word of 8 codes. The second half,
/// [`offer_below_avx2`], offers those below the threshold. (A single pass that offered each
/// group of 8 as it was counted spent half its time on the offer branch and on reloading the
/// query words the call spilled.)
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vpopcntdq")]
unsafe fn hamming_dists_avx512<const W: usize>(q: &[u64; W], tw: &[u8], dist: &mut [u16]) {
    use std::arch::x86_64::*;
    let groups = dist.len() / 8;
    assert!(tw.len() >= groups * W * 64 && W * 64 < u16::MAX as usize);
    let qv: [__m512i; W] = std::array::from_fn(|w| _mm512_set1_epi64(q[w] as i64));
    for g in 0..groups {
        let mut acc = _mm512_setzero_si512();
        for (w, qw) in qv.iter().enumerate() {
            // SAFETY: g < groups and w < W keep the 64 bytes read inside tw.
            let c =
                unsafe { _mm512_loadu_si512(tw.as_ptr().add((g * W + w) * 64) as *const __m512i) };
            acc = _mm512_add_epi64(acc, _mm512_popcnt_epi64(_mm512_xor_si512(c, *qw)));
        }
        // SAFETY: g < groups keeps the 8 u16 written inside dist.
        unsafe {
            _mm_storeu_si128(
                dist.as_mut_ptr().add(g * 8) as *mut __m128i,
                _mm512_cvtepi64_epi16(acc),
            )
        };
    }
}

/// [`hamming_dists_avx512`] for CPUs with AVX2 only: a group of 8 codes is two registers of 4
/// words; each XORed word is counted with two `vpshufb` lookups of a 16-entry nibble table
/// (Mula's method), the byte counts add up over up to 16 words, and `vpsadbw` sums each
/// code's 8 bytes into its 64-bit lane.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn hamming_dists_avx2<const W: usize>(q: &[u64; W], tw: &[u8], dist: &mut [u16]) {
    use std::arch::x86_64::*;
    let groups = dist.len() / 8;
    assert!(tw.len() >= groups * W * 64 && W * 64 < u16::MAX as usize);
    let qv: [__m256i; W] = std::array::from_fn(|w| _mm256_set1_epi64x(q[w] as i64));
    let lut = _mm256_setr_epi8(
        0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3,
        3, 4,
    );
    let nib = _mm256_set1_epi8(0x0f);
    let zero = _mm256_setzero_si256();
    let count = |v: __m256i| {
        let lo = _mm256_and_si256(v, nib);
        let hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), nib);
        _mm256_add_epi8(_mm256_shuffle_epi8(lut, lo), _mm256_shuffle_epi8(lut, hi))
    };
    for g in 0..groups {
        let (mut sum_a, mut sum_b) = (zero, zero);
        for ws in (0..W).step_by(16) {
            // bytes count at most 8 per word: 16 words stay below 256
            let (mut a, mut b) = (zero, zero);
            for (w, qw) in qv.iter().enumerate().skip(ws).take(16) {
                // SAFETY: g < groups and w < W keep the 64 bytes read inside tw.
                let (ca, cb) = unsafe {
                    let p = tw.as_ptr().add((g * W + w) * 64);
                    (
                        _mm256_loadu_si256(p as *const __m256i),
                        _mm256_loadu_si256(p.add(32) as *const __m256i),
                    )
                };
                a = _mm256_add_epi8(a, count(_mm256_xor_si256(ca, *qw)));
                b = _mm256_add_epi8(b, count(_mm256_xor_si256(cb, *qw)));
            }
            sum_a = _mm256_add_epi64(sum_a, _mm256_sad_epu8(a, zero));
            sum_b = _mm256_add_epi64(sum_b, _mm256_sad_epu8(b, zero));
        }
        // 8 u64 lanes (each below 2^16) to 8 u16 in code order: two saturating packs give
        // a0 a1 b0 b1 | a2 a3 b2 b3 per 128-bit lane, the permute joins the low halves, the
        // shuffle swaps the middle pairs.
        let x = _mm256_packus_epi32(sum_a, sum_b);
        let y = _mm256_permute4x64_epi64(_mm256_packus_epi32(x, x), 0b1000);
        let z = _mm_shuffle_epi32(_mm256_castsi256_si128(y), 0b11_01_10_00);
        // SAFETY: g < groups keeps the 8 u16 written inside dist.
        unsafe { _mm_storeu_si128(dist.as_mut_ptr().add(g * 8) as *mut __m128i, z) };
    }
}

/// The wide kernels' second half: offers the codes `first + i` whose distance `dist[i]` is
/// below the threshold, in id order (so the top-k is the reference loop's), 16 distances per
/// comparison.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn offer_below_avx2(top: &mut CountTop, dist: &[u16], first: usize) {
    use std::arch::x86_64::*;
    let mut thr = top.threshold();
    let mut i = 0;
    while i + 16 <= dist.len() {
        // SAFETY: i + 16 <= dist.len().
        let v = unsafe { _mm256_loadu_si256(dist.as_ptr().add(i) as *const __m256i) };
        // distances and threshold are below 2^15: the signed comparison is exact
        let t = _mm256_set1_epi16(thr as i16);
        let mut m = _mm256_movemask_epi8(_mm256_cmpgt_epi16(t, v)) as u32 & 0x5555_5555;
        while m != 0 {
            let l = i + m.trailing_zeros() as usize / 2;
            m &= m - 1;
            let d = dist[l] as u32;
            if d < thr {
                top.push((first + l) as u32, d);
                thr = top.threshold();
            }
        }
        i += 16;
    }
    for (l, &d) in dist.iter().enumerate().skip(i) {
        if (d as u32) < thr {
            top.push((first + l) as u32, d as u32);
            thr = top.threshold();
        }
    }
}

/// Sign codes of `words` u64 words (little-endian bytes) laid out for [`hamming_run`]: word-major
/// groups of 8 codes (word w of code `8 g + l` at bytes `((g * words + w) * 8 + l) * 8..`),
/// a short last group padded with zero codes; `out` holds `codes.len().div_ceil(8 * cl) * 8 * cl`
/// bytes (`cl = 8 * words`).
pub fn layout_words(codes: &[u8], words: usize, out: &mut [u8]) {
    let cl = 8 * words;
    let n = codes.len() / cl.max(1);
    debug_assert_eq!(out.len(), n.div_ceil(8) * 8 * cl);
    out.fill(0);
    for (r, c) in codes.chunks_exact(cl).enumerate() {
        let (g, l) = (r / 8, r % 8);
        for (w, cw) in c.chunks_exact(8).enumerate() {
            let at = ((g * words + w) * 8 + l) * 8;
            out[at..at + 8].copy_from_slice(cw);
        }
    }
}

/// Codes per kernel call of [`hamming_run`] (the distances of a call fit a stack buffer).
const RUN_CHUNK: usize = 256;

/// One query (`q`, a code of `words` words) over one list laid out by [`layout_words`]: the
/// Hamming distance plus `add` of each of the list's codes (`ids[j]` the id of code `j`)
/// offered to `top` when it reaches the threshold. `wide` picks the AVX2 kernel (the caller
/// checked the CPU), else the scalar twin; both give the same distances, so the same hits
/// (and those of one `hamming` per code, tested in `encode::sign`). The integer distances
/// are first tested against the threshold less `add`, plus one for float rounding; a
/// float test decides.
pub fn hamming_run(q: &[u8], laid: &[u8], ids: &[u32], add: f32, top: &mut TopK, wide: bool) {
    match q.len() / 8 {
        1 => hamming_run_w::<1>(q, laid, ids, add, top, wide),
        2 => hamming_run_w::<2>(q, laid, ids, add, top, wide),
        3 => hamming_run_w::<3>(q, laid, ids, add, top, wide),
        4 => hamming_run_w::<4>(q, laid, ids, add, top, wide),
        6 => hamming_run_w::<6>(q, laid, ids, add, top, wide),
        8 => hamming_run_w::<8>(q, laid, ids, add, top, wide),
        12 => hamming_run_w::<12>(q, laid, ids, add, top, wide),
        16 => hamming_run_w::<16>(q, laid, ids, add, top, wide),
        24 => hamming_run_w::<24>(q, laid, ids, add, top, wide),
        32 => hamming_run_w::<32>(q, laid, ids, add, top, wide),
        words => {
            let qw: Vec<u64> = q
                .chunks_exact(8)
                .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
                .collect();
            let mut dist = [0u16; RUN_CHUNK];
            for (ci, tw) in laid.chunks(RUN_CHUNK * words * 8).enumerate() {
                let nc = tw.len() / (words * 8);
                dists_scalar(&qw, tw, &mut dist[..nc]);
                offer_run(
                    &dist[..nc],
                    &ids[(ci * RUN_CHUNK).min(ids.len())..],
                    add,
                    top,
                );
            }
        }
    }
}

fn hamming_run_w<const W: usize>(
    q: &[u8],
    laid: &[u8],
    ids: &[u32],
    add: f32,
    top: &mut TopK,
    wide: bool,
) {
    let qw: [u64; W] =
        std::array::from_fn(|w| u64::from_le_bytes(q[w * 8..w * 8 + 8].try_into().unwrap()));
    let mut dist = [0u16; RUN_CHUNK];
    for (ci, tw) in laid.chunks(RUN_CHUNK * W * 8).enumerate() {
        let nc = tw.len() / (W * 8);
        #[cfg(target_arch = "x86_64")]
        if wide {
            // SAFETY: `wide` is only true when the CPU has AVX2; nc is a multiple of 8
            // (whole groups) and tw holds nc codes.
            unsafe { hamming_dists_avx2::<W>(&qw, tw, &mut dist[..nc]) };
        } else {
            dists_scalar(&qw, tw, &mut dist[..nc]);
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = wide;
            dists_scalar(&qw, tw, &mut dist[..nc]);
        }
        offer_run(
            &dist[..nc],
            &ids[(ci * RUN_CHUNK).min(ids.len())..],
            add,
            top,
        );
    }
}

/// The reference of the wide distance kernels over word-major groups of 8 (`tw` bytes).
#[inline(always)]
fn dists_scalar(q: &[u64], tw: &[u8], dist: &mut [u16]) {
    let words = q.len();
    for (i, d) in dist.iter_mut().enumerate() {
        let (g, l) = (i / 8, i % 8);
        let mut s = 0u32;
        for (w, &qw) in q.iter().enumerate() {
            let at = ((g * words + w) * 8 + l) * 8;
            let c = u64::from_le_bytes(tw[at..at + 8].try_into().expect("8 bytes"));
            s += popcnt64(qw ^ c);
        }
        *d = s as u16;
    }
}

/// Offers the first `ids.len()` of `dist` (the rest is padding) as `add + dist` to `top`.
#[inline(always)]
fn offer_run(dist: &[u16], ids: &[u32], add: f32, top: &mut TopK) {
    let limit = |top: &TopK| {
        let t = top.threshold();
        if t.is_finite() {
            (t - add).floor() + 1.0
        } else {
            f32::INFINITY
        }
    };
    let mut lim = limit(top);
    for (&d, &id) in dist.iter().zip(ids) {
        if d as f32 <= lim {
            let v = add + d as f32;
            if v <= top.threshold() {
                top.push(id, v);
                lim = limit(top);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The AVX2 and AVX-512 popcount scans against their scalar twin: identical hits (ids and distances,
    /// ties included) for every code length, a base that is not a multiple of 8 codes and
    /// spans several blocks, and k from 1 to beyond the base.
    #[test]
    fn hamming_wide_scans_equal_the_scalar_twin() {
        #[cfg(target_arch = "x86_64")]
        let kernels: Vec<HammingKernel> = [
            (is_x86_feature_detected!("avx2"), HammingKernel::Avx2),
            (
                is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vpopcntdq"),
                HammingKernel::Avx512,
            ),
        ]
        .into_iter()
        .filter_map(|(has, k)| has.then_some(k))
        .collect();
        #[cfg(not(target_arch = "x86_64"))]
        let kernels: Vec<HammingKernel> = Vec::new();
        if kernels.is_empty() {
            eprintln!("skipped: this CPU has neither AVX2 nor AVX-512 VPOPCNTDQ");
            return;
        }
        let mut next = crate::testutil::xorshift(7);
        fn check<const W: usize>(
            kernels: &[HammingKernel],
            next: &mut impl FnMut() -> u64,
            n: usize,
            nq: usize,
        ) {
            // Few distinct bits, so distances tie often.
            let mut word = |sparse: bool| {
                if sparse {
                    next() & next() & next()
                } else {
                    next()
                }
            };
            let codes: Vec<u8> = (0..n * W)
                .flat_map(|i| word(i % 3 == 0).to_le_bytes())
                .collect();
            let queries: Vec<Vec<u8>> = (0..nq)
                .map(|_| (0..W).flat_map(|_| word(false).to_le_bytes()).collect())
                .collect();
            for k in [1, 10, 100, n + 5] {
                let b = scan_hamming_with::<W>(
                    &queries,
                    &codes,
                    k,
                    HammingKernel::Scalar,
                    crate::topk::Allow::ALL,
                );
                for &kernel in kernels {
                    let a = scan_hamming_with::<W>(
                        &queries,
                        &codes,
                        k,
                        kernel,
                        crate::topk::Allow::ALL,
                    );
                    assert_eq!(a, b, "{kernel:?}: W {W}, n {n}, k {k}");
                }
            }
        }
        check::<1>(&kernels, &mut next, 20_011, 7);
        check::<2>(&kernels, &mut next, 9_001, 5);
        check::<4>(&kernels, &mut next, 10_003, 9);
        check::<6>(&kernels, &mut next, 4_001, 3);
        check::<8>(&kernels, &mut next, 3_005, 4);
        check::<4>(&kernels, &mut next, 5, 2);
        check::<12>(&kernels, &mut next, 2_001, 2);
        check::<16>(&kernels, &mut next, 2_003, 3);
        check::<32>(&kernels, &mut next, 1_001, 3);
    }
}
