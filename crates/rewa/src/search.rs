//! Top-k, exact search, code scans, and the staged pipeline described as data.
//!
//! A [`Pipeline`] is a list of stages `SPEC:keep` (text form `hadamard512+sign:1000,int8:100,exact:10`).
//! The first stage scans every vector; each later stage rescores only the survivors of the
//! one before, and `exact` rescores with the original float vectors. It is faiss's
//! `IndexRefine` with a `k_factor`, written as a list.
//!
//! Scans are batched for throughput: the first stage walks the codes in blocks that stay in
//! cache while a group of queries is scored against them (otherwise every query would stream
//! the whole code array from memory), and `exact`/continuous first stages score blocks with a
//! GEMM. Rayon splits the queries.

use crate::distance::{hamming, Metric};
use crate::encode::{with_quantizer, AnyQuantizer, Encoder, EncoderSpec, Quantizer};
use crate::error::{invalid, Error, Result};
use crate::simd::twin;
use crate::vectors::VectorsRef;
use rayon::prelude::*;
use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::fmt;
use std::str::FromStr;

/// One search result: an id (insertion position) and its distance (lower is closer).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Hit {
    /// Position of the vector in insertion order.
    pub id: u32,
    /// Distance to the query in the space of the stage that produced it.
    pub distance: f32,
}

impl Eq for Hit {}
impl Ord for Hit {
    /// By `(distance, id)`, so that ties always come out in the same order.
    fn cmp(&self, o: &Self) -> Ordering {
        self.distance
            .total_cmp(&o.distance)
            .then(self.id.cmp(&o.id))
    }
}
impl PartialOrd for Hit {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}

/// The `k` smallest hits seen so far, by `(distance, id)`.
///
/// Up to [`TopK::HEAP_MAX`] a binary heap keeps exactly the best `k` (its root is the
/// threshold). For a larger `k` (a first stage keeping hundreds of candidates) a heap push
/// costs more than scanning a code, so candidates are appended to a buffer instead and the
/// buffer is cut back to the best `k` (one `select_nth_unstable`) whenever it reaches `2k`: the
/// threshold is then the k-th distance as of the last cut, looser than the heap's, but each
/// push costs O(1) amortized. Both give exactly the best `k` by `(distance, id)` of everything
/// offered at or below the threshold.
#[derive(Clone, Debug)]
pub struct TopK {
    k: usize,
    heap: BinaryHeap<Hit>,
    buf: Vec<Hit>,
    worst: f32,
}

impl TopK {
    /// The largest `k` kept in a heap.
    pub const HEAP_MAX: usize = 64;

    /// An empty top-k. `k` must be at least 1.
    pub fn new(k: usize) -> Self {
        debug_assert!(k >= 1);
        let heap = k <= Self::HEAP_MAX;
        TopK {
            k,
            // A huge k must not allocate up front: storage grows only as hits arrive.
            heap: BinaryHeap::with_capacity(if heap { k + 1 } else { 0 }),
            buf: Vec::with_capacity(if heap { 0 } else { (2 * k).min(8192) }),
            worst: f32::INFINITY,
        }
    }
    /// Distances above this cannot enter (ties are decided by id).
    #[inline(always)]
    pub fn threshold(&self) -> f32 {
        self.worst
    }
    /// Offers a candidate.
    #[inline(always)]
    pub fn push(&mut self, id: u32, distance: f32) {
        let h = Hit { id, distance };
        if self.k > Self::HEAP_MAX {
            if distance <= self.worst {
                self.buf.push(h);
                if self.buf.len() >= 2 * self.k {
                    self.cut();
                }
            }
            return;
        }
        if self.heap.len() < self.k {
            self.heap.push(h);
            if self.heap.len() == self.k {
                self.worst = self.heap.peek().map_or(f32::INFINITY, |w| w.distance);
            }
        } else {
            let replaced = match self.heap.peek_mut() {
                Some(mut top) if h < *top => {
                    *top = h;
                    true
                }
                _ => false,
            };
            if replaced {
                self.worst = self.heap.peek().map_or(f32::INFINITY, |w| w.distance);
            }
        }
    }
    /// Keeps the best `k` of the buffer; the threshold becomes the k-th distance.
    #[cold]
    fn cut(&mut self) {
        let k = self.k;
        self.buf.select_nth_unstable(k - 1);
        self.buf.truncate(k);
        self.worst = self.buf[k - 1].distance;
    }
    /// The hits, best first.
    pub fn into_sorted(mut self) -> Vec<Hit> {
        if self.k > Self::HEAP_MAX {
            if self.buf.len() > self.k {
                self.cut();
            }
            self.buf.sort_unstable();
            return self.buf;
        }
        self.heap.into_sorted_vec()
    }
}

/// The `k` smallest of a stream of small integer distances (`0..=max`, e.g. Hamming
/// distances), by `(distance, id)`, without comparisons: a histogram of the kept distances
/// gives the exact k-th distance after every push, and the result comes out already sorted
/// by distance (a counting sort). A first stage keeping hundreds of candidates spent a third
/// of its time in [`TopK`]'s cuts and final sort; this costs O(1) per push.
///
/// `threshold()` is the k-th distance so far (`max + 1` until `k` are kept). A caller
/// offering ids in ascending order may offer only distances below it (a tie would lose to the
/// earlier ids); a caller in any other id order offers distances at or below it, and ties at
/// the k-th distance are decided by id at the end.
#[derive(Clone, Debug)]
pub struct CountTop {
    k: usize,
    hist: Vec<u32>,
    thr: u32,
    below: usize,
    buf: Vec<(u32, u32)>,
    ascending: bool,
    last: Option<u32>,
}

impl CountTop {
    /// An empty top-`k` of distances in `0..=max`; `k` must be at least 1.
    pub fn new(k: usize, max: u32) -> CountTop {
        debug_assert!(k >= 1);
        CountTop {
            k,
            hist: vec![0; max as usize + 2],
            thr: max + 1,
            below: 0,
            buf: Vec::with_capacity(Self::limit(k).min(8192)),
            ascending: true,
            last: None,
        }
    }
    /// The k-th distance kept so far (`max + 1` while fewer than `k` are kept).
    #[inline(always)]
    pub fn threshold(&self) -> u32 {
        self.thr
    }
    /// Offers a candidate; anything above the threshold is ignored.
    #[inline(always)]
    pub fn push(&mut self, id: u32, d: u32) {
        if d > self.thr {
            return;
        }
        if let Some(last) = self.last {
            self.ascending &= id > last;
        }
        self.last = Some(id);
        self.hist[d as usize] += 1;
        self.buf.push((id, d));
        if d < self.thr {
            self.below += 1;
            while self.below >= self.k {
                self.thr -= 1;
                self.below -= self.hist[self.thr as usize] as usize;
            }
        }
        if self.buf.len() >= Self::limit(self.k) {
            self.shrink();
        }
    }
    /// Kept candidates at which those above the threshold are dropped.
    fn limit(k: usize) -> usize {
        2 * k + 256
    }
    /// Keeps only what can still make the top: every candidate below the threshold and the
    /// smallest ids of those at it.
    #[cold]
    fn shrink(&mut self) {
        let t = self.thr;
        let need = self.k - self.below;
        let mut at: Vec<(u32, u32)> = Vec::new();
        self.buf.retain(|&(id, d)| {
            if d == t {
                at.push((id, d));
            }
            d < t
        });
        if at.len() > need {
            at.select_nth_unstable(need);
            at.truncate(need);
            at.sort_unstable();
        } else if !self.ascending {
            at.sort_unstable();
        }
        if let Some(h) = self.hist.get_mut(t as usize) {
            *h = at.len() as u32;
        }
        self.buf.append(&mut at);
    }
    /// The best `k` by `(distance, id)`, sorted.
    pub fn into_sorted(mut self) -> Vec<Hit> {
        self.shrink();
        // counting sort by distance; stable, so ids keep the order they came in
        let t = self.thr as usize;
        let mut start = vec![0usize; t + 2];
        for &(_, d) in &self.buf {
            start[d as usize + 1] += 1;
        }
        for i in 1..start.len() {
            start[i] += start[i - 1];
        }
        let mut out = vec![
            Hit {
                id: 0,
                distance: 0.0
            };
            self.buf.len()
        ];
        for &(id, d) in &self.buf {
            let s = &mut start[d as usize];
            out[*s] = Hit {
                id,
                distance: d as f32,
            };
            *s += 1;
        }
        if !self.ascending {
            out.sort_unstable();
        }
        out
    }
}

#[cfg(test)]
mod topk_tests {
    use super::*;

    /// Both ways of keeping the top k return the sorted best k by (distance, id) of a stream
    /// with many ties, whatever the order it arrives in.
    #[test]
    fn top_k_is_the_best_k_of_the_stream_for_small_and_large_k() {
        let mut next = crate::testutil::xorshift(11);
        let hits: Vec<Hit> = (0..20_000u32)
            .map(|id| Hit {
                id,
                distance: (next() % 500) as f32,
            })
            .collect();
        for k in [1, 7, 64, 65, 300, 5_000, 20_000, 30_000] {
            for order in 0..2 {
                let mut t = TopK::new(k);
                let mut stream = hits.clone();
                if order == 1 {
                    stream.reverse();
                }
                for h in &stream {
                    // as the kernels offer: only at or below the threshold
                    if h.distance <= t.threshold() {
                        t.push(h.id, h.distance);
                    }
                }
                let mut want = hits.clone();
                want.sort_unstable();
                want.truncate(k);
                assert_eq!(t.into_sorted(), want, "k {k}, order {order}");
            }
        }
    }

    /// The counting top-k returns the sorted best k by (distance, id) of integer distances
    /// with many ties: ids ascending and offered only below the threshold (as the Hamming
    /// scans do), and in shuffled order offered at or below it (as list scans do).
    #[test]
    fn counting_top_k_is_the_best_k_of_the_stream() {
        let mut next = crate::testutil::xorshift(5);
        for max in [0u32, 3, 256] {
            let hits: Vec<Hit> = (0..20_000u32)
                .map(|id| Hit {
                    id,
                    distance: (next() % (max as u64 + 1)) as f32,
                })
                .collect();
            for k in [1, 7, 64, 65, 300, 2_000, 5_000, 20_000, 30_000] {
                for order in 0..3 {
                    let mut t = CountTop::new(k, max);
                    let mut stream = hits.clone();
                    match order {
                        1 => stream.reverse(),
                        2 => stream.sort_by_key(|h| h.id.wrapping_mul(2_654_435_761)),
                        _ => {}
                    }
                    for h in &stream {
                        let d = h.distance as u32;
                        if d < t.threshold() || (order > 0 && d == t.threshold()) {
                            t.push(h.id, d);
                        }
                    }
                    let mut want = hits.clone();
                    want.sort_unstable();
                    want.truncate(k);
                    assert_eq!(t.into_sorted(), want, "max {max}, k {k}, order {order}");
                }
            }
        }
    }
}

/// Reference top-k: scores every pair with [`Metric::distance`] and sorts. O(n log n) per query;
/// for tests and as the definition the fast paths must agree with.
pub fn brute_force(
    base: VectorsRef<'_>,
    queries: VectorsRef<'_>,
    metric: Metric,
    k: usize,
) -> Vec<Vec<Hit>> {
    queries
        .rows()
        .map(|q| {
            let mut all: Vec<Hit> = base
                .rows()
                .enumerate()
                .map(|(i, b)| Hit {
                    id: i as u32,
                    distance: metric.distance(q, b),
                })
                .collect();
            all.sort_unstable();
            all.truncate(k);
            all
        })
        .collect()
}

pub(crate) fn query_block(nq: usize) -> usize {
    // Few large blocks: a GEMM re-packs its base block once per query block, and a code scan
    // streams each code block once per query block.
    let threads = rayon::current_num_threads().max(1);
    nq.div_ceil(threads).clamp(1, 512)
}

/// Exact top-`k` of every query over `base` (blocked GEMM, rayon over query blocks; a few
/// queries over a large base split the base between threads instead).
/// For cosine, inputs must already be normalised.
pub fn exact_search(
    base: VectorsRef<'_>,
    queries: VectorsRef<'_>,
    metric: Metric,
    k: usize,
) -> Vec<Vec<Hit>> {
    sharded(
        base.len(),
        queries.len(),
        k.min(base.len()).max(1),
        |a, b| exact_search_serial(base.slice(a, b), queries, metric, k),
    )
}

fn exact_search_serial(
    base: VectorsRef<'_>,
    queries: VectorsRef<'_>,
    metric: Metric,
    k: usize,
) -> Vec<Vec<Hit>> {
    debug_assert_eq!(base.dim(), queries.dim());
    let d = base.dim();
    let n = base.len();
    let k = k.min(n).max(1);
    let l2 = !metric.is_similarity();
    let bnorm: Vec<f32> = if l2 { row_norms(base) } else { Vec::new() };
    const BB: usize = 1024;
    let qb = query_block(queries.len());
    queries
        .as_slice()
        .par_chunks(qb * d)
        .flat_map_iter(|qs| {
            let nq = qs.len() / d;
            let qnorm: Vec<f32> = qs
                .chunks_exact(d)
                .map(|q| crate::distance::dot(q, q))
                .collect();
            let mut tops: Vec<TopK> = (0..nq).map(|_| TopK::new(k)).collect();
            let mut scores = vec![0f32; nq * BB];
            for (bi, bs) in base.as_slice().chunks(BB * d).enumerate() {
                let nb = bs.len() / d;
                // scores (nq x nb) = qs (nq x d) * bs^T (d x nb)
                crate::linalg::gemm_abt(qs, bs, nq, d, nb, &mut scores);
                let off = bi * BB;
                for (qi, top) in tops.iter_mut().enumerate() {
                    let row = &scores[qi * nb..(qi + 1) * nb];
                    if l2 {
                        let bn = &bnorm[off..off + nb];
                        for (j, (&s, &b)) in row.iter().zip(bn).enumerate() {
                            let dist = (qnorm[qi] + b - 2.0 * s).max(0.0);
                            if dist < top.threshold() {
                                top.push((off + j) as u32, dist);
                            }
                        }
                    } else {
                        for (j, &s) in row.iter().enumerate() {
                            if -s < top.threshold() {
                                top.push((off + j) as u32, -s);
                            }
                        }
                    }
                }
            }
            tops.into_iter().map(TopK::into_sorted)
        })
        .collect()
}

twin! { [row_norms_baseline, row_norms_avx2]
/// Squared L2 norm of every row.
fn row_norms(base: VectorsRef<'_>) -> Vec<f32> {
    base.rows().map(|r| crate::distance::dot(r, r)).collect()
}
}

/// Top-`k` of every query over `codes` written by `enc` (`enc.code_len()` bytes each): the
/// queries are transformed, prepared for the quantizer, and scanned with its kernel.
pub fn scan_encoded(
    enc: &Encoder,
    codes: &[u8],
    queries: VectorsRef<'_>,
    k: usize,
) -> Vec<Vec<Hit>> {
    let tq = enc.transform_batch(queries);
    enc.quantizer().scan(tq.view(), codes, k)
}

/// A scan with table queries (`asign`, `pq`): a prepared query is `code_len` tables of 256
/// floats (32 KiB for 32-byte codes), so queries are prepared a slice at a time and stay in
/// cache and memory.
pub(crate) fn scan_tables<Q: Quantizer<Query = Vec<[f32; 256]>>>(
    q: &Q,
    tq: VectorsRef<'_>,
    codes: &[u8],
    k: usize,
) -> Vec<Vec<Hit>> {
    let d = tq.dim();
    tq.as_slice()
        .chunks(64 * d)
        .flat_map(|c| {
            let qs: Vec<_> = c
                .par_chunks(16 * d)
                .flat_map_iter(|c| {
                    q.prepare_batch(VectorsRef::new(d, c).expect("invariant: whole rows"))
                })
                .collect();
            scan_codes(q, &qs, codes, k)
        })
        .collect()
}

/// First-stage scan of `codes` (`code_len` bytes each) for many prepared queries; a few
/// queries over a large base split the base between threads (see `sharded`).
pub fn scan_codes<Q: Quantizer>(
    quantizer: &Q,
    queries: &[Q::Query],
    codes: &[u8],
    k: usize,
) -> Vec<Vec<Hit>> {
    let cl = quantizer.code_len();
    let n = codes.len() / cl;
    sharded(n, queries.len(), k.min(n).max(1), |a, b| {
        scan_codes_serial(quantizer, queries, &codes[a * cl..b * cl], k)
    })
}

fn scan_codes_serial<Q: Quantizer>(
    quantizer: &Q,
    queries: &[Q::Query],
    codes: &[u8],
    k: usize,
) -> Vec<Vec<Hit>> {
    let cl = quantizer.code_len();
    let n = codes.len() / cl;
    let k = k.min(n).max(1);
    let qb = query_block(queries.len());
    queries
        .par_chunks(qb)
        .flat_map_iter(|qs| scan_block(quantizer, qs, codes, k))
        .collect()
}

twin! { [scan_block_baseline, scan_block_avx2]
/// One group of queries over all `codes`, block by block: about 128 KiB of codes stays in L2
/// while every query of the group scans it.
pub(crate) fn scan_block<Q: Quantizer>(
    quantizer: &Q,
    qs: &[Q::Query],
    codes: &[u8],
    k: usize,
) -> Vec<Vec<Hit>> {
    let cl = quantizer.code_len();
    let block = ((128 << 10) / cl).max(16);
    let mut tops: Vec<TopK> = qs.iter().map(|_| TopK::new(k)).collect();
    for (bi, bc) in codes.chunks(block * cl).enumerate() {
        let off = bi * block;
        for (q, top) in qs.iter().zip(tops.iter_mut()) {
            for (j, c) in bc.chunks_exact(cl).enumerate() {
                let dist = quantizer.distance(q, c);
                if dist < top.threshold() {
                    top.push((off + j) as u32, dist);
                }
            }
        }
    }
    tops.into_iter().map(TopK::into_sorted).collect()
}
}

/// Population count of one word as a single scalar `POPCNT`.
///
/// With `count_ones`, LLVM's SLP vectorizer packs a code's words into one AVX2 register,
/// counts bits with byte shuffles and then needs a horizontal sum per code, which measured
/// slower than one scalar POPCNT per word (4 per cycle on current x86 cores). The asm keeps
/// it scalar. [`crate::distance::hamming_reference`] is the reference it is tested against
/// (through `scan_codes`).
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
/// the same result as [`scan_codes`] on a `SignQuantizer`, with the popcount loop unrolled.
///
/// The base is scanned a block at a time (128 KiB of codes, kept in cache while a group of
/// queries passes over it). On CPUs with AVX-512 VPOPCNTDQ each block is first copied
/// word-major (word w of 8 consecutive codes side by side) so that one instruction XORs and
/// counts one word of 8 codes, the counts add up vertically into 8 distances, and one
/// comparison with the current k-th distance tells which of the 8 may enter the top-k; the
/// scalar loop (one `popcnt` per word per code) is the reference twin and gives identical
/// results (tested).
pub fn scan_hamming<const W: usize>(queries: &[Vec<u8>], codes: &[u8], k: usize) -> Vec<Vec<Hit>> {
    let kernel = if crate::simd::avx512_popcnt() {
        HammingKernel::Avx512
    } else if crate::simd::avx2() {
        HammingKernel::Avx2
    } else {
        HammingKernel::Scalar
    };
    scan_hamming_with::<W>(queries, codes, k, kernel)
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

/// [`scan_hamming`] with the kernel chosen by the caller (which the CPU must have); for the
/// tests and measurements that compare them.
pub fn scan_hamming_with<const W: usize>(
    queries: &[Vec<u8>],
    codes: &[u8],
    k: usize,
    kernel: HammingKernel,
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
            let mut tops: Vec<CountTop> =
                qs.iter().map(|_| CountTop::new(k, 64 * W as u32)).collect();
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
                            hamming_dists_avx512::<W>(q, &tw, &mut dist);
                            offer_below_avx2(top, &dist, off);
                            dist.len()
                        },
                        #[cfg(target_arch = "x86_64")]
                        // SAFETY: the caller picks Avx2 only when the CPU has AVX2.
                        HammingKernel::Avx2 => unsafe {
                            dist.resize(bn / 8 * 8, 0);
                            hamming_dists_avx2::<W>(q, &tw, &mut dist);
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
unsafe fn hamming_dists_avx512<const W: usize>(q: &[u64; W], tw: &[u64], dist: &mut [u16]) {
    use std::arch::x86_64::*;
    let groups = dist.len() / 8;
    assert!(tw.len() >= groups * W * 8 && W * 64 < u16::MAX as usize);
    let qv: [__m512i; W] = std::array::from_fn(|w| _mm512_set1_epi64(q[w] as i64));
    for g in 0..groups {
        let mut acc = _mm512_setzero_si512();
        for (w, qw) in qv.iter().enumerate() {
            // SAFETY: g < groups and w < W keep the 8 words read inside tw.
            let c =
                unsafe { _mm512_loadu_si512(tw.as_ptr().add((g * W + w) * 8) as *const __m512i) };
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
unsafe fn hamming_dists_avx2<const W: usize>(q: &[u64; W], tw: &[u64], dist: &mut [u16]) {
    use std::arch::x86_64::*;
    let groups = dist.len() / 8;
    assert!(tw.len() >= groups * W * 8 && W * 64 < u16::MAX as usize);
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
                // SAFETY: g < groups and w < W keep the 8 words read inside tw.
                let (ca, cb) = unsafe {
                    let p = tw.as_ptr().add((g * W + w) * 8);
                    (
                        _mm256_loadu_si256(p as *const __m256i),
                        _mm256_loadu_si256(p.add(4) as *const __m256i),
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

/// Below this many rows a scan never splits the base between threads.
const SHARD_MIN_ROWS: usize = 1 << 16;

/// Runs `scan(start, end)` over contiguous shards of `n` rows in parallel when there are fewer
/// queries than threads (a single query would otherwise use one core), shifts each shard's
/// ids by its start and merges per query. Ties break by id as in one serial scan, so the
/// result is identical.
pub(crate) fn sharded<F>(n: usize, nq: usize, k: usize, scan: F) -> Vec<Vec<Hit>>
where
    F: Fn(usize, usize) -> Vec<Vec<Hit>> + Sync,
{
    let threads = rayon::current_num_threads();
    if threads < 2 || nq >= threads || n < SHARD_MIN_ROWS {
        return scan(0, n);
    }
    let per = n.div_ceil(threads);
    let parts: Vec<Vec<Vec<Hit>>> = (0..threads)
        .into_par_iter()
        .map(|s| {
            let (a, b) = (s * per, ((s + 1) * per).min(n));
            let mut r = scan(a, b);
            for h in r.iter_mut().flatten() {
                h.id += a as u32;
            }
            r
        })
        .collect();
    (0..nq)
        .map(|q| {
            let mut all: Vec<Hit> = parts.iter().flat_map(|p| p[q].iter().copied()).collect();
            all.sort_unstable();
            all.truncate(k);
            all
        })
        .collect()
}

/// Hamming scan for any code length, choosing an unrolled kernel where one exists; a few
/// queries over a large base split the base between threads.
pub fn scan_sign(queries: &[Vec<u8>], codes: &[u8], code_len: usize, k: usize) -> Vec<Vec<Hit>> {
    let n = codes.len() / code_len.max(1);
    sharded(n, queries.len(), k, |a, b| {
        scan_sign_serial(queries, &codes[a * code_len..b * code_len], code_len, k)
    })
}

fn scan_sign_serial(queries: &[Vec<u8>], codes: &[u8], code_len: usize, k: usize) -> Vec<Vec<Hit>> {
    match code_len / 8 {
        1 => scan_hamming::<1>(queries, codes, k),
        2 => scan_hamming::<2>(queries, codes, k),
        3 => scan_hamming::<3>(queries, codes, k),
        4 => scan_hamming::<4>(queries, codes, k),
        6 => scan_hamming::<6>(queries, codes, k),
        8 => scan_hamming::<8>(queries, codes, k),
        12 => scan_hamming::<12>(queries, codes, k),
        16 => scan_hamming::<16>(queries, codes, k),
        24 => scan_hamming::<24>(queries, codes, k),
        32 => scan_hamming::<32>(queries, codes, k),
        _ => {
            struct H(usize);
            impl Quantizer for H {
                type Config = ();
                type Query = Vec<u8>;
                fn fit(_: &(), _: VectorsRef<'_>, _: u64) -> Result<Self> {
                    unreachable!()
                }
                fn code_len(&self) -> usize {
                    self.0
                }
                fn encode(&self, _: &[f32], _: &mut [u8]) {}
                fn prepare(&self, _: &[f32]) -> Vec<u8> {
                    unreachable!()
                }
                fn distance(&self, q: &Vec<u8>, c: &[u8]) -> f32 {
                    hamming(q, c) as f32
                }
            }
            scan_codes(&H(code_len), queries, codes, k)
        }
    }
}

/// Rescores candidates `ids` with `score` and keeps the best `keep`.
#[inline(always)]
pub fn rerank(
    ids: impl Iterator<Item = u32>,
    keep: usize,
    mut score: impl FnMut(u32) -> f32,
) -> Vec<Hit> {
    let mut top = TopK::new(keep.max(1));
    for id in ids {
        let d = score(id);
        if d <= top.threshold() {
            top.push(id, d);
        }
    }
    top.into_sorted()
}

/// Fixed-length rows held in parts (an index's segments), each part a run of ids in
/// ascending order, parts in id order: what a stage scans part by part and what a rerank
/// reads by id.
#[derive(Clone, Debug)]
pub struct Rows<'a> {
    row_len: usize,
    parts: Vec<RowPart<'a>>,
    /// The first id of each part (for [`Rows::locate`]).
    firsts: Vec<u32>,
}

/// One part of [`Rows`].
#[derive(Clone, Copy, Debug)]
pub struct RowPart<'a> {
    /// Row `j` has id `start + j`, unless `ids` is given.
    pub start: u32,
    /// Row `j` has id `ids[j]` (ascending): a part that lost deleted rows when it was compacted.
    pub ids: Option<&'a [u32]>,
    /// The rows (for a partitioned code set: in list order, see `lists`).
    pub data: &'a [u8],
    /// For a partitioned code set: the lists, whose ids are row numbers within this part.
    pub lists: Option<ListsRef<'a>>,
}

impl RowPart<'_> {
    /// The id of row `j`.
    #[inline(always)]
    pub fn id(&self, j: u32) -> u32 {
        match self.ids {
            Some(ids) => ids[j as usize],
            None => self.start + j,
        }
    }
    /// The smallest and the largest id (for an empty part, `start` and `start - 1`).
    fn id_range(&self, rows: usize) -> (u32, Option<u32>) {
        match self.ids {
            Some(ids) => (
                ids.first().copied().unwrap_or(self.start),
                ids.last().copied(),
            ),
            None => (
                self.start,
                (rows as u32).checked_sub(1).map(|r| self.start + r),
            ),
        }
    }
}

impl<'a> Rows<'a> {
    /// Parts of `row_len`-byte rows; their id ranges must rise and not overlap.
    pub fn new(row_len: usize, parts: Vec<RowPart<'a>>) -> Rows<'a> {
        let firsts = parts
            .iter()
            .map(|p| p.id_range(p.data.len() / row_len.max(1)).0)
            .collect();
        Rows {
            row_len,
            parts,
            firsts,
        }
    }
    /// One part of rows `0..`, ids equal to row numbers.
    pub fn single(row_len: usize, data: &'a [u8]) -> Rows<'a> {
        Rows::new(
            row_len,
            vec![RowPart {
                start: 0,
                ids: None,
                data,
                lists: None,
            }],
        )
    }
    /// The parts.
    pub fn parts(&self) -> &[RowPart<'a>] {
        &self.parts
    }
    /// Bytes per row.
    pub fn row_len(&self) -> usize {
        self.row_len
    }
    /// The part and row holding `id`. `id` must be held (hits only carry ids that are).
    #[inline(always)]
    pub fn locate(&self, id: u32) -> (&RowPart<'a>, usize) {
        let p = if self.parts.len() == 1 {
            0
        } else {
            self.firsts.partition_point(|&f| f <= id).saturating_sub(1)
        };
        let part = &self.parts[p];
        let j = match part.ids {
            Some(ids) => ids.binary_search(&id).unwrap_or_else(|_| {
                unreachable!("invariant: id {id} is held by the part its range names")
            }),
            None => (id - part.start) as usize,
        };
        (part, j)
    }
    /// The row of `id` (not for a partitioned code set, whose rows are in list order).
    #[inline(always)]
    pub fn row(&self, id: u32) -> &'a [u8] {
        let (part, j) = self.locate(id);
        let data: &'a [u8] = part.data;
        &data[j * self.row_len..(j + 1) * self.row_len]
    }
}

/// Deleted ids (tombstones): never returned by a search. Kept sorted, with a bitmap for the
/// per-hit check.
#[derive(Clone, Debug, Default)]
pub struct Deleted {
    sorted: Vec<u32>,
    bits: Vec<u64>,
}

impl Deleted {
    /// From ids in any order (repeats allowed).
    pub fn new(mut ids: Vec<u32>) -> Deleted {
        ids.sort_unstable();
        ids.dedup();
        let mut bits = vec![0u64; ids.last().map_or(0, |&m| m as usize / 64 + 1)];
        for &i in &ids {
            bits[i as usize / 64] |= 1 << (i % 64);
        }
        Deleted { sorted: ids, bits }
    }
    /// Whether `id` is deleted.
    #[inline(always)]
    pub fn contains(&self, id: u32) -> bool {
        self.bits
            .get(id as usize / 64)
            .is_some_and(|w| w & (1 << (id % 64)) != 0)
    }
    /// Deleted ids in `lo..=hi`.
    pub fn count_in(&self, lo: u32, hi: u32) -> usize {
        self.sorted.partition_point(|&i| i <= hi) - self.sorted.partition_point(|&i| i < lo)
    }
    /// The ids, ascending.
    pub fn ids(&self) -> &[u32] {
        &self.sorted
    }
    /// Number of deleted ids.
    pub fn len(&self) -> usize {
        self.sorted.len()
    }
    /// `true` if nothing is deleted.
    pub fn is_empty(&self) -> bool {
        self.sorted.is_empty()
    }
}

/// What one stage scores with: the stored float vectors or one encoder's codes. The stage
/// runner sees both ways of scoring a code set side by side: [`Scored::scan`] for the first
/// stage, [`Scored::rerank`] for the survivors of the stage before.
#[derive(Clone, Debug)]
pub enum Scored<'a> {
    /// The float vectors (normalised for cosine), compared by `metric`.
    Exact {
        /// `4 * dim` bytes per id.
        vectors: Rows<'a>,
        /// Their dimension.
        dim: usize,
        /// How they are compared.
        metric: Metric,
    },
    /// Codes written by `encoder`, `encoder.code_len()` bytes per id; a partitioned encoder's
    /// parts carry their lists and a first stage probes `nprobe` of them.
    Codes {
        /// The fitted encoder.
        encoder: &'a Encoder,
        /// The codes.
        codes: Rows<'a>,
        /// Lists probed per query (a partitioned first stage).
        nprobe: Option<usize>,
        /// `rabitq<bits>:bound`: keep every code the error bound (this confidence constant)
        /// cannot rule out of the next stage's top (a first stage).
        bound: Option<f32>,
    },
}

/// The lists of a partitioned code set: list `l` holds the codes at positions
/// `offsets[l]..offsets[l + 1]`, and `ids[p]` is the id of the code at position `p`.
#[derive(Clone, Copy, Debug)]
pub struct ListsRef<'a> {
    /// `nlist + 1` positions, from 0 up to the number of codes.
    pub offsets: &'a [u32],
    /// One id per code, in list order.
    pub ids: &'a [u32],
}

/// A first stage over a partitioned code set: the `nprobe` lists nearest to each query (by the
/// encoder's coarse quantizer, one GEMM for the batch), then the codes of those lists scored
/// with the quantizer's distance, queries in parallel. Ties at the k-th distance are decided
/// by id, so the hits do not depend on list order: with every list probed they are the
/// hits of a full scan of the same codes.
pub fn scan_partitioned(
    encoder: &Encoder,
    codes: &[u8],
    lists: ListsRef<'_>,
    nprobe: usize,
    queries: VectorsRef<'_>,
    keep: usize,
) -> Vec<Vec<Hit>> {
    let Some(coarse) = encoder.coarse() else {
        return scan_encoded(encoder, codes, queries, keep);
    };
    let nq = queries.len();
    if nq == 0 {
        return Vec::new();
    }
    let probes = coarse.probe(queries, nprobe);
    let np = probes.len() / nq;
    let tq = encoder.transform_batch(queries);
    let residual = encoder.spec().residual;
    with_quantizer!(encoder.quantizer(), q => {
        (0..nq)
            .into_par_iter()
            .map(|i| {
                let p = q.prepare(tq.row(i));
                let probed = &probes[i * np..(i + 1) * np];
                // residual codes: -q.x = -q.c - q.r, the code scoring the second term
                let offsets: Vec<f32> = probed
                    .iter()
                    .map(|&l| if residual { -coarse.dot_centroid(queries.row(i), l) } else { 0.0 })
                    .collect();
                scan_lists(q, &p, codes, lists, probed, &offsets, keep)
            })
            .collect()
    })
}

twin! { [scan_lists_baseline, scan_lists_avx2]
/// One prepared query over the codes of the lists `probes`, `offsets[j]` added to the
/// distances of list `probes[j]` (residual codes; zeros otherwise).
fn scan_lists<Q: Quantizer>(
    q: &Q,
    p: &Q::Query,
    codes: &[u8],
    lists: ListsRef<'_>,
    probes: &[u32],
    offsets: &[f32],
    keep: usize,
) -> Vec<Hit> {
    let cl = q.code_len();
    let mut top = TopK::new(keep.max(1));
    for (&l, &off) in probes.iter().zip(offsets) {
        let (a, b) = (
            lists.offsets[l as usize] as usize,
            lists.offsets[l as usize + 1] as usize,
        );
        for (c, &id) in codes[a * cl..b * cl].chunks_exact(cl).zip(&lists.ids[a..b]) {
            let d = off + q.distance(p, c);
            if d <= top.threshold() {
                top.push(id, d);
            }
        }
    }
    top.into_sorted()
}
}

impl Scored<'_> {
    fn rows(&self) -> &Rows<'_> {
        match self {
            Scored::Exact { vectors, .. } => vectors,
            Scored::Codes { codes, .. } => codes,
        }
    }

    /// Every live row scored (or the probed lists of a partitioned stage), part by part; the
    /// best `keep` per query. Each part is asked for `keep` plus the deleted ids in its range,
    /// so dropping those still leaves `keep`. A bound stage keeps instead every code its
    /// error bound cannot rule out of the best `next` (the next stage's keep).
    pub fn scan(
        &self,
        queries: VectorsRef<'_>,
        keep: usize,
        next: usize,
        deleted: &Deleted,
    ) -> Vec<Vec<Hit>> {
        if let Scored::Codes {
            bound: Some(eps),
            encoder,
            codes,
            nprobe,
        } = self
        {
            return scan_bound(encoder, codes, *nprobe, queries, next, *eps, deleted);
        }
        let rows = self.rows();
        let row_len = rows.row_len().max(1);
        let mut merged: Option<Vec<Vec<Hit>>> = None;
        for part in rows.parts() {
            let n = part.data.len() / row_len;
            if n == 0 {
                continue;
            }
            let (lo, hi) = part.id_range(n);
            let extra = deleted.count_in(lo, hi.unwrap_or(lo));
            let kp = keep.saturating_add(extra);
            let mut hits = match (self, part.lists) {
                (Scored::Exact { dim, metric, .. }, _) => exact_search(
                    VectorsRef::new(*dim, bytemuck::cast_slice(part.data))
                        .expect("invariant: whole rows"),
                    queries,
                    *metric,
                    kp,
                ),
                (
                    Scored::Codes {
                        encoder,
                        nprobe: Some(np),
                        ..
                    },
                    Some(lists),
                ) => scan_partitioned(encoder, part.data, lists, *np, queries, kp),
                (Scored::Codes { encoder, .. }, _) => scan_encoded(encoder, part.data, queries, kp),
            };
            let plain = part.ids.is_none() && part.start == 0 && extra == 0;
            if !plain {
                for h in &mut hits {
                    for x in h.iter_mut() {
                        x.id = part.id(x.id);
                    }
                    if extra > 0 {
                        h.retain(|x| !deleted.contains(x.id));
                    }
                    h.truncate(keep);
                }
            }
            merged = Some(match merged {
                None => hits,
                Some(mut m) => {
                    for (a, b) in m.iter_mut().zip(hits) {
                        a.extend(b);
                        a.sort_unstable();
                        a.truncate(keep);
                    }
                    m
                }
            });
        }
        merged.unwrap_or_else(|| vec![Vec::new(); queries.len()])
    }

    /// The hits `prev` of one query rescored; the best `keep`. A partitioned code set is kept
    /// in list order and only scans ([`Pipeline::new`] allows it in the first stage only).
    pub fn rerank(&self, query: &[f32], prev: &[Hit], keep: usize) -> Vec<Hit> {
        match self {
            Scored::Exact {
                vectors, metric, ..
            } => rerank_exact(vectors, *metric, query, prev, keep),
            Scored::Codes { encoder, codes, .. } => {
                debug_assert!(codes.parts().iter().all(|p| p.lists.is_none()));
                let tq = encoder.transform(query);
                with_quantizer!(encoder.quantizer(), q => {
                    rerank_codes(q, &q.prepare(&tq), codes, prev, keep)
                })
            }
        }
    }
}

/// Rows a rerank asks the memory for ahead of the one it scores: candidates are scattered
/// over the codes or vectors, so each row is a cache miss the scoring would otherwise wait for.
const PREFETCH_AHEAD: usize = 4;

/// Asks for every cache line of `row` (a hint: no effect on results).
#[inline(always)]
fn prefetch(row: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    for off in (0..row.len()).step_by(64) {
        // SAFETY: a prefetch of an address inside `row`; it never faults and reads nothing.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                row.as_ptr().add(off) as *const i8,
            )
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = row;
}

twin! { [rerank_exact_baseline, rerank_exact_avx2]
/// A plain loop, not [`rerank`] with a closure: a closure is a function of its own, compiled
/// without the twin's target features unless inlined, and this one was not (the AVX2 twin
/// ran the baseline dot product: 44% of a SciFact cascade's time).
fn rerank_exact(
    vectors: &Rows<'_>,
    metric: Metric,
    query: &[f32],
    prev: &[Hit],
    keep: usize,
) -> Vec<Hit> {
    let mut top = TopK::new(keep.min(prev.len()).max(1));
    for (i, h) in prev.iter().enumerate() {
        if let Some(next) = prev.get(i + PREFETCH_AHEAD) {
            prefetch(vectors.row(next.id));
        }
        let d = metric.distance(query, bytemuck::cast_slice(vectors.row(h.id)));
        if d <= top.threshold() {
            top.push(h.id, d);
        }
    }
    top.into_sorted()
}
}

twin! { [rerank_codes_baseline, rerank_codes_avx2]
/// A plain loop for the reason given at [`rerank_exact`].
fn rerank_codes<Q: Quantizer>(q: &Q, p: &Q::Query, codes: &Rows<'_>, prev: &[Hit], keep: usize) -> Vec<Hit> {
    let mut top = TopK::new(keep.min(prev.len()).max(1));
    for (i, h) in prev.iter().enumerate() {
        if let Some(next) = prev.get(i + PREFETCH_AHEAD) {
            prefetch(codes.row(next.id));
        }
        let d = q.distance(p, codes.row(h.id));
        if d <= top.threshold() {
            top.push(h.id, d);
        }
    }
    top.into_sorted()
}
}

/// Runs a pipeline: the first stage scans everything (but `deleted` ids), each later stage
/// rescores the survivors of the one before (queries in parallel on the current rayon pool);
/// the last stage's hits are cut to `k`. `queries` must be prepared (normalised for cosine,
/// checked).
pub fn run_stages(
    stages: &[(Scored<'_>, usize)],
    queries: VectorsRef<'_>,
    k: usize,
    deleted: &Deleted,
) -> Vec<Vec<Hit>> {
    run_stages_counted(stages, queries, k, deleted).0
}

/// [`run_stages`], also counting the hits each stage passed on (summed over the queries).
pub fn run_stages_counted(
    stages: &[(Scored<'_>, usize)],
    queries: VectorsRef<'_>,
    k: usize,
    deleted: &Deleted,
) -> (Vec<Vec<Hit>>, Vec<usize>) {
    let Some(((first, keep), rest)) = stages.split_first() else {
        return (vec![Vec::new(); queries.len()], Vec::new());
    };
    let next = rest.first().map_or(k, |(_, n)| *n).min(*keep);
    let mut out = Vec::with_capacity(queries.len());
    let mut counts = vec![0; stages.len()];
    // A chunk of queries at a time through every stage: the candidate lists of the whole
    // batch (queries x keep hits) would be fresh memory the kernel zeroes page by page (17% of
    // a SciFact cascade's time); a chunk's are reused by the next chunk.
    for start in (0..queries.len()).step_by(RUN_CHUNK) {
        let qs = queries.slice(start, (start + RUN_CHUNK).min(queries.len()));
        let mut hits = first.scan(qs, *keep, next, deleted);
        counts[0] += hits.iter().map(Vec::len).sum::<usize>();
        for (i, (scored, keep)) in rest.iter().enumerate() {
            hits = hits
                .into_par_iter()
                .enumerate()
                .map(|(qi, prev)| scored.rerank(qs.row(qi), &prev, *keep))
                .collect();
            counts[i + 1] += hits.iter().map(Vec::len).sum::<usize>();
        }
        out.extend(hits.into_iter().map(|mut h| {
            h.truncate(k);
            h
        }));
    }
    (out, counts)
}

/// Queries taken through all stages at a time by [`run_stages`].
const RUN_CHUNK: usize = 1024;

/// A first stage of RaBitQ codes keeping every code its error bound cannot rule out of the
/// best `next` (see [`RabitqQuantizer::scan_bound`]), part by part; deleted ids are dropped.
fn scan_bound(
    encoder: &Encoder,
    codes: &Rows<'_>,
    nprobe: Option<usize>,
    queries: VectorsRef<'_>,
    next: usize,
    eps: f32,
    deleted: &Deleted,
) -> Vec<Vec<Hit>> {
    let AnyQuantizer::Rabitq(q) = encoder.quantizer() else {
        unreachable!("invariant: Pipeline::new allows :bound on rabitq stages only")
    };
    let nq = queries.len();
    let tq = encoder.transform_batch(queries);
    let cl = q.code_len();
    // the lists each query probes, once for every segment
    let probes = match (encoder.coarse(), nprobe) {
        (Some(coarse), Some(np)) => coarse.probe(queries, np),
        _ => Vec::new(),
    };
    let mut out: Vec<Vec<Hit>> = vec![Vec::new(); nq];
    for part in codes.parts() {
        let n = part.data.len() / cl.max(1);
        if n == 0 {
            continue;
        }
        let (lo, hi) = part.id_range(n);
        let kp = next.saturating_add(deleted.count_in(lo, hi.unwrap_or(lo)));
        let hits: Vec<Vec<Hit>> = match (encoder.coarse(), part.lists, nprobe) {
            (Some(coarse), Some(lists), Some(_)) => {
                let npr = probes.len() / nq.max(1);
                let residual = encoder.spec().residual;
                (0..nq)
                    .into_par_iter()
                    .map(|i| {
                        let p = q.prepare(tq.row(i));
                        let parts: Vec<(&[u8], Option<&[u32]>, f32)> = probes
                            [i * npr..(i + 1) * npr]
                            .iter()
                            .map(|&l| {
                                let (a, b) = (
                                    lists.offsets[l as usize] as usize,
                                    lists.offsets[l as usize + 1] as usize,
                                );
                                let off = if residual {
                                    -coarse.dot_centroid(queries.row(i), l)
                                } else {
                                    0.0
                                };
                                (&part.data[a * cl..b * cl], Some(&lists.ids[a..b]), off)
                            })
                            .collect();
                        q.bound_lists(&p, &parts, kp, eps)
                    })
                    .collect()
            }
            _ => q.scan_bound(tq.view(), part.data, kp, eps),
        };
        for (o, h) in out.iter_mut().zip(hits) {
            o.extend(
                h.into_iter()
                    .map(|x| Hit {
                        id: part.id(x.id),
                        distance: x.distance,
                    })
                    .filter(|x| !deleted.contains(x.id)),
            );
        }
    }
    if codes.parts().len() > 1 {
        out.iter_mut().for_each(|h| h.sort_unstable());
    }
    out
}

/// What scores a stage.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Scorer {
    /// The original float vectors.
    Exact,
    /// Codes of an encoder.
    Codes(EncoderSpec),
}

/// One stage: a scorer and how many hits survive it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Stage {
    /// What scores this stage.
    pub scorer: Scorer,
    /// How many hits it passes on.
    pub keep: usize,
    /// Lists probed per query, for a partitioned encoder (`ivf<nlist>/<nprobe>+...`, first
    /// stage only); `None` otherwise.
    pub nprobe: Option<usize>,
    /// `rabitq<bits>:bound` (first stage): instead of a fixed keep, every code the RaBitQ
    /// error bound cannot rule out of the next stage's top; the confidence constant `eps0` in
    /// hundredths (`:bound` is 1.9, `:bound=3.5` 3.5). `keep` is then `usize::MAX`.
    pub bound: Option<u16>,
}

impl Stage {
    /// A stage without partition.
    pub fn new(scorer: Scorer, keep: usize) -> Stage {
        Stage {
            scorer,
            keep,
            nprobe: None,
            bound: None,
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.scorer {
            Scorer::Codes(spec) => spec.fmt_probing(f, self.nprobe)?,
            Scorer::Exact => f.write_str("exact")?,
        }
        match self.bound {
            Some(190) => f.write_str(":bound"),
            Some(e) => write!(f, ":bound={}", e as f32 / 100.0),
            None => write!(f, ":{}", self.keep),
        }
    }
}

/// Stages run in order; text form `hadamard512+sign:1000,int8:100,exact:10`.
///
/// ```
/// use rewa::Pipeline;
/// let p: Pipeline = "hadamard256+sign:1000,exact:10".parse().unwrap();
/// assert_eq!(p.stages().len(), 2);
/// assert_eq!(p.to_string(), "hadamard256+sign:1000,exact:10");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Pipeline {
    /// At least one stage; every `keep` at least 1 and none larger than the one before.
    stages: Vec<Stage>,
}

impl Pipeline {
    /// Checks and wraps `stages`: at least one, every `keep >= 1`, and no stage keeping more
    /// than the stage before it.
    pub fn new(stages: Vec<Stage>) -> Result<Pipeline> {
        if stages.is_empty() {
            return invalid!("empty pipeline (try hadamard256+sign:1000,exact:10)");
        }
        for (i, st) in stages.iter().enumerate() {
            let nlist = match &st.scorer {
                Scorer::Codes(spec) => spec.ivf,
                Scorer::Exact => None,
            };
            match (nlist, st.nprobe) {
                (None, None) => {}
                (Some(_), None) => {
                    return invalid!(
                        "pipeline stage {st}: a partitioned stage names the lists it probes, e.g. ivf1024/16+pq32:100"
                    )
                }
                (None, Some(_)) => {
                    return invalid!("pipeline stage {st}: lists to probe without ivf<nlist>")
                }
                (Some(_), Some(_)) if i > 0 => {
                    return invalid!(
                        "pipeline stage {st}: only the first stage can be partitioned (later stages rescore the survivors by id)"
                    )
                }
                (Some(nlist), Some(p)) if p > nlist => {
                    return invalid!("pipeline stage {st}: probes {p} of only {nlist} lists")
                }
                (Some(_), Some(_)) => {}
            }
            if let Some(e) = st.bound {
                let rabitq = matches!(&st.scorer, Scorer::Codes(s) if matches!(s.quantizer, crate::encode::QuantizerSpec::Rabitq { .. }));
                if !rabitq || i > 0 || stages.len() == 1 {
                    return invalid!(
                        "pipeline stage {st}: only a first stage of rabitq<bits> codes followed by a rerank can keep what its error bound requires (e.g. rabitq1:bound,exact:10)"
                    );
                }
                if e == 0 || st.keep != usize::MAX {
                    return invalid!("pipeline stage {st}: the bound's constant must be > 0");
                }
            }
            if st.keep == 0 {
                return invalid!(
                    "pipeline stage {}:{}: keep must be >= 1",
                    st.scorer,
                    st.keep
                );
            }
            if let Some(prev) = i.checked_sub(1).map(|j| stages[j].keep) {
                if st.keep > prev {
                    return invalid!(
                        "pipeline stage {}:{} keeps {}, more than the {prev} before it",
                        st.scorer,
                        st.keep,
                        st.keep
                    );
                }
            }
        }
        Ok(Pipeline { stages })
    }
    /// A one-stage pipeline scanning `spec`'s codes (`keep` is raised to 1 if 0).
    pub fn single(spec: EncoderSpec, keep: usize) -> Self {
        Pipeline {
            stages: vec![Stage {
                nprobe: spec.ivf.map(|n| n.min(16)),
                scorer: Scorer::Codes(spec),
                keep: keep.max(1),
                bound: None,
            }],
        }
    }
    /// The stages, in order.
    pub fn stages(&self) -> &[Stage] {
        &self.stages
    }
    /// Checks the pipeline for a search returning `k` hits: last `keep >= k`.
    pub fn check(&self, k: usize) -> Result<()> {
        if k == 0 {
            return invalid!("k must be at least 1");
        }
        let last = self.stages.last().map_or(0, |s| s.keep);
        if last < k {
            return invalid!("pipeline {self}: the last stage keeps {last}, fewer than k = {k}");
        }
        Ok(())
    }
    /// The number of hits the last stage returns.
    pub fn final_keep(&self) -> usize {
        self.stages.last().map_or(0, |s| s.keep)
    }
    /// The distinct encoder specs the pipeline scores with, in first-use order.
    pub fn encoders(&self) -> Vec<&EncoderSpec> {
        let mut out: Vec<&EncoderSpec> = Vec::new();
        for s in &self.stages {
            if let Scorer::Codes(spec) = &s.scorer {
                if !out.contains(&spec) {
                    out.push(spec);
                }
            }
        }
        out
    }
    /// `true` if some stage scores with the original vectors.
    pub fn needs_vectors(&self) -> bool {
        self.stages.iter().any(|s| s.scorer == Scorer::Exact)
    }
    /// The same stages with the `keep` of each replaced by `keeps` (for tuning).
    pub fn with_keeps(&self, keeps: &[usize]) -> Result<Pipeline> {
        if keeps.len() != self.stages.len() {
            return invalid!(
                "pipeline {self} has {} stages, {} keeps given",
                self.stages.len(),
                keeps.len()
            );
        }
        Pipeline::new(
            self.stages
                .iter()
                .zip(keeps)
                .map(|(s, &keep)| Stage {
                    scorer: s.scorer.clone(),
                    keep: if s.bound.is_some() { s.keep } else { keep },
                    nprobe: s.nprobe,
                    bound: s.bound,
                })
                .collect(),
        )
    }
    /// Lists the first stage probes, if it is partitioned.
    pub fn nprobe(&self) -> Option<usize> {
        self.stages[0].nprobe
    }
    /// The lists of the first stage, if it is partitioned, and its `nlist`.
    pub fn nlist(&self) -> Option<usize> {
        match &self.stages[0].scorer {
            Scorer::Codes(spec) => spec.ivf,
            Scorer::Exact => None,
        }
    }
    /// The same stages with the first probing `nprobe` lists (for tuning); an error unless it
    /// is partitioned.
    pub fn with_nprobe(&self, nprobe: usize) -> Result<Pipeline> {
        if self.nprobe().is_none() {
            return invalid!(
                "pipeline {self}: the first stage is not partitioned (ivf<nlist>/<nprobe>+...)"
            );
        }
        let mut stages = self.stages.clone();
        stages[0].nprobe = Some(nprobe);
        Pipeline::new(stages)
    }
}

impl fmt::Display for Scorer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scorer::Exact => f.write_str("exact"),
            Scorer::Codes(s) => write!(f, "{s}"),
        }
    }
}

impl fmt::Display for Pipeline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.stages.iter().map(|s| s.to_string()).collect();
        f.write_str(&parts.join(","))
    }
}

impl FromStr for Pipeline {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim();
        if s.is_empty() {
            return invalid!("empty pipeline (try hadamard256+sign:1000,exact:10)");
        }
        let mut stages = Vec::new();
        for part in crate::encode::EncoderSpec::split_outside_quotes(s, ',')
            .into_iter()
            .map(str::trim)
        {
            let Some((scorer, keep)) =
                crate::encode::EncoderSpec::rsplit_once_outside_quotes(part, ':')
            else {
                return invalid!(
                    "pipeline stage {part:?} has no ':keep' (e.g. hadamard256+sign:1000)"
                );
            };
            let keep = keep.trim();
            let bound = match keep.strip_prefix("bound") {
                None => None,
                Some("") => Some(190u16),
                Some(e) => match e.strip_prefix('=').map(|e| e.parse::<f32>()) {
                    Some(Ok(e)) if e > 0.0 && e <= 100.0 => Some((e * 100.0).round() as u16),
                    _ => {
                        return invalid!(
                            "pipeline stage {part:?}: bound takes a confidence constant from 0 to 100, e.g. :bound or :bound=3.5"
                        )
                    }
                },
            };
            let keep: usize = match (bound, keep.parse()) {
                (Some(_), _) => usize::MAX,
                (None, Ok(k)) if k >= 1 => k,
                _ => return invalid!("pipeline stage {part:?}: keep must be a whole number >= 1, or bound for rabitq<bits> codes"),
            };
            let (scorer, nprobe) = match scorer.trim() {
                "exact" => (Scorer::Exact, None),
                other => {
                    let (spec, nprobe) = EncoderSpec::parse_probing(other)?;
                    (Scorer::Codes(spec), nprobe)
                }
            };
            stages.push(Stage {
                scorer,
                keep,
                nprobe,
                bound,
            });
        }
        Pipeline::new(stages).map_err(|e| match e {
            Error::InvalidInput(m) => Error::InvalidInput(format!("{m} (in {s:?})")),
            other => other,
        })
    }
}

impl serde::Serialize for Pipeline {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Pipeline {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// Query-time settings.
#[derive(Clone, Debug)]
pub struct SearchParams {
    /// Hits returned per query.
    pub k: usize,
    /// The stages to run; `None` uses the index's default pipeline.
    pub pipeline: Option<Pipeline>,
}

impl Default for SearchParams {
    fn default() -> Self {
        SearchParams {
            k: 10,
            pipeline: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::gaussian;

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
                let b = scan_hamming_with::<W>(&queries, &codes, k, HammingKernel::Scalar);
                for &kernel in kernels {
                    let a = scan_hamming_with::<W>(&queries, &codes, k, kernel);
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

    #[test]
    fn pipelines_round_trip_and_reject_bad_text() {
        for s in [
            "exact:10",
            "hadamard512+sign:1000,int8:100,exact:10",
            "pca64:50",
        ] {
            let p: Pipeline = s.parse().unwrap();
            assert_eq!(p.to_string(), s);
            assert_eq!(p.to_string().parse::<Pipeline>().unwrap(), p);
        }
        for s in [
            "",
            "sign",
            "sign:0",
            "sign:x",
            "sign:10,exact:20",
            "bogus:10",
            "exact:10,,sign:5",
        ] {
            assert!(
                matches!(s.parse::<Pipeline>(), Err(Error::InvalidInput(_))),
                "{s:?} parsed"
            );
        }
        let p: Pipeline = "sign:100,exact:5".parse().unwrap();
        assert!(matches!(p.check(10), Err(Error::InvalidInput(_))));
        assert!(matches!(p.check(0), Err(Error::InvalidInput(_))));
        assert!(p.check(5).is_ok());
    }

    #[test]
    fn topk_breaks_ties_by_id() {
        let mut t = TopK::new(2);
        for id in [5, 3, 9, 1] {
            t.push(id, 1.0);
        }
        assert_eq!(
            t.into_sorted().iter().map(|h| h.id).collect::<Vec<_>>(),
            [1, 3]
        );
    }

    #[test]
    fn exact_search_matches_brute_force() {
        for (d, metric) in [
            (7, Metric::Ip),
            (65, Metric::L2),
            (128, Metric::Ip),
            (33, Metric::L2),
        ] {
            let base = gaussian(3000, d, 1);
            let qs = gaussian(37, d, 2);
            let fast = exact_search(base.view(), qs.view(), metric, 10);
            let slow = brute_force(base.view(), qs.view(), metric, 10);
            for (f, s) in fast.iter().zip(&slow) {
                let fi: Vec<u32> = f.iter().map(|h| h.id).collect();
                let si: Vec<u32> = s.iter().map(|h| h.id).collect();
                assert_eq!(fi, si, "d={d} {metric}");
                for (a, b) in f.iter().zip(s) {
                    assert!((a.distance - b.distance).abs() < 1e-3 * (1.0 + b.distance.abs()));
                }
            }
        }
    }

    /// Every twin gives the same result from both compilations (on a CPU without AVX2 only
    /// the baseline runs; CI also runs the suite with `REWA_NO_AVX2=1`).
    #[test]
    fn avx2_twins_equal_baseline_for_every_quantizer() {
        let base = crate::testutil::gaussian(3000, 77, 11);
        let qs = crate::testutil::gaussian(9, 77, 12);
        for metric in [Metric::Ip, Metric::L2] {
            assert_eq!(row_norms_baseline(base.view()), row_norms(base.view()));
            for spec in ["flat", "sign", "asign", "int8", "pq7", "hadamard64+int8"] {
                let enc = Encoder::fit(&spec.parse().unwrap(), base.view(), metric, 3).unwrap();
                let codes = enc.encode_batch(base.view()).unwrap();
                let code_rows = Rows::single(enc.code_len(), &codes);
                let vec_rows = Rows::single(4 * 77, bytemuck::cast_slice(base.as_slice()));
                let tq = enc.transform_batch(qs.view());
                with_quantizer!(enc.quantizer(), q => {
                    let prepared = q.prepare_batch(tq.view());
                    let base_hits = scan_block_baseline(q, &prepared, &codes, 50);
                    let prev: Vec<Hit> = base_hits[0].clone();
                    let re = rerank_codes_baseline(q, &prepared[0], &code_rows, &prev, 10);
                    let ex = rerank_exact_baseline(&vec_rows, metric, qs.row(0), &prev, 10);
                    #[cfg(target_arch = "x86_64")]
                    if crate::simd::avx2() {
                        // SAFETY: checked just above.
                        unsafe {
                            assert_eq!(scan_block_avx2(q, &prepared, &codes, 50), base_hits, "{spec}");
                            assert_eq!(rerank_codes_avx2(q, &prepared[0], &code_rows, &prev, 10), re);
                            assert_eq!(rerank_exact_avx2(&vec_rows, metric, qs.row(0), &prev, 10), ex);
                        }
                    }
                    // and the dispatching entry points agree with the baseline
                    assert_eq!(scan_block(q, &prepared, &codes, 50), base_hits, "{spec}");
                    assert_eq!(rerank_codes(q, &prepared[0], &code_rows, &prev, 10), re);
                });
            }
        }
    }

    #[test]
    fn pipelines_are_validated_in_one_constructor() {
        let st = |keep| Stage::new(Scorer::Exact, keep);
        assert!(Pipeline::new(vec![]).is_err());
        assert!(Pipeline::new(vec![st(0)]).is_err());
        assert!(Pipeline::new(vec![st(10), st(20)]).is_err());
        let p = Pipeline::new(vec![st(20), st(10)]).unwrap();
        assert!(p
            .with_keeps(&[5, 10])
            .unwrap_err()
            .to_string()
            .contains("more than"));
        assert!(p.with_keeps(&[5]).is_err());
        // partitioned stages: first only, nprobe given and at most nlist; round trips
        for ok in [
            "ivf64/8+pq16:100,exact:10",
            "ivf1024/16+flat:10",
            "ivf16/16+hadamard256+sign:50,int8:20",
            "ivf8/1+opq16+pq16:100,ivf8+opq16+pq16:50",
        ] {
            match ok.parse::<Pipeline>() {
                Ok(p) => assert_eq!(p.to_string(), ok),
                Err(e) => assert!(ok.contains(",ivf8+"), "{ok}: {e}"),
            }
        }
        for (bad, why) in [
            ("ivf64+pq16:100", "names the lists it probes"),
            ("ivf64/65+pq16:100", "probes 65 of only 64"),
            ("ivf64/0+pq16:100", ">= 1"),
            ("ivf64/x+pq16:100", ">= 1"),
            ("exact:100,ivf64/8+pq16:10", "only the first stage"),
            ("hadamard64+ivf64/8+sign:10", "first token"),
        ] {
            let e = bad.parse::<Pipeline>().unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
        let p: Pipeline = "ivf64/8+pq16:100,exact:10".parse().unwrap();
        assert_eq!((p.nlist(), p.nprobe()), (Some(64), Some(8)));
        assert_eq!(
            p.with_nprobe(32).unwrap().to_string(),
            "ivf64/32+pq16:100,exact:10"
        );
        assert!(p.with_nprobe(65).is_err());
        assert_eq!(p.with_keeps(&[50, 5]).unwrap().nprobe(), Some(8));
        assert_eq!(Metric::Ip.score(-0.5), 0.5);
        assert_eq!(Metric::Cosine.score(-0.5), 0.5);
        assert_eq!(Metric::L2.score(2.0), 2.0);
    }

    #[test]
    fn unrolled_hamming_matches_generic() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
        for words in [1usize, 2, 3, 4, 5, 6, 8, 12, 16, 24] {
            let cl = words * 8;
            let codes: Vec<u8> = (0..cl * 5000).map(|_| rng.random()).collect();
            let qs: Vec<Vec<u8>> = (0..9)
                .map(|_| (0..cl).map(|_| rng.random()).collect())
                .collect();
            let fast = scan_sign(&qs, &codes, cl, 20);
            for (q, f) in qs.iter().zip(&fast) {
                let want = rerank(0..5000u32, 20, |i| {
                    hamming(q, &codes[i as usize * cl..(i as usize + 1) * cl]) as f32
                });
                assert_eq!(f, &want, "words={words}");
            }
        }
    }
}
