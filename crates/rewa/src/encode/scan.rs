//! The first-stage scans generic over a [`Quantizer`]: every code scored with the
//! quantizer's distance, a block of codes at a time ([`scan_codes`]); the same for table
//! queries prepared a slice at a time ([`scan_tables`]); from an [`Encoder`] and raw queries
//! ([`scan_encoded`]); and [`scan_sign`], which picks an unrolled Hamming kernel where one
//! exists. The kernels below them are in `crate::kernels`.

use super::{Encoder, Quantizer};
use crate::distance::hamming;
use crate::error::Result;
use crate::kernels::{query_block, scan_hamming_with, sharded};
use crate::rows::{ListsRef, Run};
use crate::simd::twin;
use crate::topk::{Allow, Hit, TopK};
use crate::vectors::VectorsRef;
use rayon::prelude::*;

/// Top-`k` of every query over `codes` written by `enc` (`enc.code_len()` bytes each; only
/// rows `allow` allows): the queries are transformed, prepared for the quantizer, and
/// scanned with its kernel.
pub fn scan_encoded(
    enc: &Encoder,
    codes: &[u8],
    queries: VectorsRef<'_>,
    k: usize,
    allow: Allow<'_>,
) -> Vec<Vec<Hit>> {
    let tq = enc.transform_batch(queries);
    enc.quantizer().scan(tq.view(), codes, k, allow)
}

/// A scan with table queries (`asign`, `pq`): a prepared query is `code_len` tables of 256
/// floats (32 KiB for 32-byte codes), so queries are prepared a slice at a time and stay in
/// cache and memory.
pub(crate) fn scan_tables<Q: Quantizer<Query = Vec<[f32; 256]>>>(
    q: &Q,
    tq: VectorsRef<'_>,
    codes: &[u8],
    k: usize,
    allow: Allow<'_>,
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
            scan_codes(q, &qs, codes, k, allow)
        })
        .collect()
}

/// First-stage scan of `codes` (`code_len` bytes each; only rows `allow` allows) for many
/// prepared queries; a few queries over a large base split the base between threads (see
/// `sharded`).
pub fn scan_codes<Q: Quantizer>(
    quantizer: &Q,
    queries: &[Q::Query],
    codes: &[u8],
    k: usize,
    allow: Allow<'_>,
) -> Vec<Vec<Hit>> {
    let cl = quantizer.code_len();
    let n = codes.len() / cl;
    sharded(n, queries.len(), k.min(n).max(1), |a, b| {
        scan_codes_serial(
            quantizer,
            queries,
            &codes[a * cl..b * cl],
            k,
            allow.shifted(a as u32),
        )
    })
}

fn scan_codes_serial<Q: Quantizer>(
    quantizer: &Q,
    queries: &[Q::Query],
    codes: &[u8],
    k: usize,
    allow: Allow<'_>,
) -> Vec<Vec<Hit>> {
    let cl = quantizer.code_len();
    let n = codes.len() / cl;
    let k = k.min(n).max(1);
    let qb = query_block(queries.len());
    queries
        .par_chunks(qb)
        .flat_map_iter(|qs| scan_block(quantizer, qs, codes, k, allow))
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
    allow: Allow<'_>,
) -> Vec<Vec<Hit>> {
    let cl = quantizer.code_len();
    let block = ((128 << 10) / cl).max(16);
    let mut tops: Vec<TopK> = qs.iter().map(|_| TopK::allowing(k, allow)).collect();
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

/// Queries prepared and scanned together by [`scan_lists_grouped`]: a list's codes are read
/// from memory once for all the group's queries that probe it. Measured on GloVe (`pq25`,
/// `sign`) and SciFact sentences (`sign`): 16 and 8 were faster than 64 (each query's top-k
/// stays in cache), 1 slower.
pub(crate) const LIST_GROUP: usize = 16;

/// The probes of a group of queries (`np` per query) grouped by list: `items` holds every
/// `(list, rank, query)` sorted by list, and `runs` one `(best rank, a, b)` per list (its
/// items are `items[a..b]`), ordered by the best rank any query gives the list, so that the
/// queries' thresholds tighten early.
pub(crate) struct ListRuns {
    pub(crate) items: Vec<(u32, u32, u32)>,
    pub(crate) runs: Vec<(u32, usize, usize)>,
}

impl ListRuns {
    pub(crate) fn new(probes: &[u32], np: usize) -> ListRuns {
        let mut items: Vec<(u32, u32, u32)> = probes
            .chunks(np.max(1))
            .enumerate()
            .flat_map(|(qi, pr)| {
                pr.iter()
                    .enumerate()
                    .map(move |(j, &l)| (l, j as u32, qi as u32))
            })
            .collect();
        items.sort_unstable();
        let mut runs: Vec<(u32, usize, usize)> = Vec::new();
        let mut a = 0;
        while a < items.len() {
            let l = items[a].0;
            let mut b = a;
            let mut best = u32::MAX;
            while b < items.len() && items[b].0 == l {
                best = best.min(items[b].1);
                b += 1;
            }
            runs.push((best, a, b));
            a = b;
        }
        runs.sort_unstable();
        ListRuns { items, runs }
    }
}

/// [`Quantizer::scan_lists_batch`] by the quantizer's run kernel ([`Quantizer::scan_run`]):
/// the queries in groups of [`LIST_GROUP`] (groups in parallel), each group list by list (see
/// [`ListRuns`]), every query of the group that probes a list scanning it while it is in
/// cache. The hits equal one `distance` per probed code's for each query (ties by id).
#[allow(clippy::too_many_arguments)]
pub(crate) fn scan_lists_grouped<Q: Quantizer>(
    q: &Q,
    tq: VectorsRef<'_>,
    codes: &[u8],
    lists: ListsRef<'_>,
    probes: &[u32],
    np: usize,
    adds: &[f32],
    keep: usize,
    allow: Allow<'_>,
) -> Vec<Vec<Hit>> {
    let d = tq.dim().max(1);
    let cl = q.code_len();
    tq.as_slice()
        .par_chunks(LIST_GROUP * d)
        .enumerate()
        .flat_map_iter(|(gi, rows)| {
            let group = q.prepare_batch(VectorsRef::new(tq.dim(), rows).expect("whole rows"));
            let r = gi * LIST_GROUP * np..(gi * LIST_GROUP + group.len()) * np;
            let (probes, adds) = (&probes[r.clone()], &adds[r]);
            let mut tops: Vec<TopK> = group
                .iter()
                .map(|_| TopK::allowing(keep.max(1), allow))
                .collect();
            let lr = ListRuns::new(probes, np);
            for &(_, a, b) in &lr.runs {
                let l = lr.items[a].0 as usize;
                let (s, e) = (lists.offsets[l] as usize, lists.offsets[l + 1] as usize);
                let run = Run {
                    codes: &codes[s * cl..e * cl],
                    laid: lists.layout.map(|x| x.list(l)),
                    ids: &lists.ids[s..e],
                };
                for &(_, rank, qi) in &lr.items[a..b] {
                    let qi = qi as usize;
                    q.scan_run(
                        &group[qi],
                        run,
                        adds[qi * np + rank as usize],
                        &mut tops[qi],
                    );
                }
            }
            tops.into_iter().map(TopK::into_sorted)
        })
        .collect()
}

twin! { [scan_run_codes_baseline, scan_run_codes_avx2]
/// [`Quantizer::scan_run`] one `distance` per code: the default and the reference.
pub(crate) fn scan_run_codes<Q: Quantizer>(q: &Q, p: &Q::Query, run: Run<'_>, add: f32, top: &mut TopK) -> () {
    let cl = q.code_len();
    for (c, &id) in run.codes.chunks_exact(cl).zip(run.ids) {
        let d = add + q.distance(p, c);
        if d <= top.threshold() {
            top.push(id, d);
        }
    }
}
}

twin! { [scan_lists_codes_baseline, scan_lists_codes_avx2]
/// One query's partitioned first stage one code at a time: the reference the blocked
/// kernels are tested against.
#[cfg(test)]
pub(crate) fn scan_lists_codes<Q: Quantizer>(
    q: &Q,
    p: &Q::Query,
    codes: &[u8],
    lists: ListsRef<'_>,
    probes: &[u32],
    add: &[f32],
    keep: usize,
) -> Vec<Hit> {
    let cl = q.code_len();
    let mut top = TopK::new(keep.max(1));
    for (&l, &off) in probes.iter().zip(add) {
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

/// Hamming scan for any code length (only rows `allow` allows), choosing an unrolled kernel
/// where one exists; a few queries over a large base split the base between threads.
pub fn scan_sign(
    queries: &[Vec<u8>],
    codes: &[u8],
    code_len: usize,
    k: usize,
    allow: Allow<'_>,
) -> Vec<Vec<Hit>> {
    let n = codes.len() / code_len.max(1);
    sharded(n, queries.len(), k, |a, b| {
        let codes = &codes[a * code_len..b * code_len];
        scan_sign_serial(queries, codes, code_len, k, allow.shifted(a as u32))
    })
}

fn scan_sign_serial(
    queries: &[Vec<u8>],
    codes: &[u8],
    code_len: usize,
    k: usize,
    allow: Allow<'_>,
) -> Vec<Vec<Hit>> {
    let kernel = crate::kernels::hamming_kernel();
    match code_len / 8 {
        1 => scan_hamming_with::<1>(queries, codes, k, kernel, allow),
        2 => scan_hamming_with::<2>(queries, codes, k, kernel, allow),
        3 => scan_hamming_with::<3>(queries, codes, k, kernel, allow),
        4 => scan_hamming_with::<4>(queries, codes, k, kernel, allow),
        6 => scan_hamming_with::<6>(queries, codes, k, kernel, allow),
        8 => scan_hamming_with::<8>(queries, codes, k, kernel, allow),
        12 => scan_hamming_with::<12>(queries, codes, k, kernel, allow),
        16 => scan_hamming_with::<16>(queries, codes, k, kernel, allow),
        24 => scan_hamming_with::<24>(queries, codes, k, kernel, allow),
        32 => scan_hamming_with::<32>(queries, codes, k, kernel, allow),
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
            scan_codes(&H(code_len), queries, codes, k, allow)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topk::rerank;

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
            let fast = scan_sign(&qs, &codes, cl, 20, Allow::ALL);
            for (q, f) in qs.iter().zip(&fast) {
                let want = rerank(0..5000u32, 20, |i| {
                    hamming(q, &codes[i as usize * cl..(i as usize + 1) * cl]) as f32
                });
                assert_eq!(f, &want, "words={words}");
            }
        }
    }
}
