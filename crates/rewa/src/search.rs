//! The stage runner: [`run_stages`] takes the queries through a [`Pipeline`]'s stages, each a
//! [`Scored`] (the float vectors or one encoder's codes): the first stage scans every live
//! row (or the probed lists of a partitioned code set), each later stage reranks the
//! survivors of the one before by id.
//!
//! Scans are batched for throughput: the first stage walks the codes in blocks that stay in
//! cache while a group of queries is scored against them (otherwise every query would stream
//! the whole code array from memory), and `exact`/continuous first stages score blocks with a
//! GEMM. Rayon splits the queries.
//!
//! What the runner builds on lives below it: top-k in `topk`, the kernels in `kernels`, the
//! scans generic over a quantizer in `encode::scan`, row storage in `rows`, the grammar in
//! `pipeline`. Their public items are re-exported here, so `rewa::search::...` paths stay.

use crate::distance::Metric;
use crate::encode::{with_quantizer, AnyQuantizer, Encoder, Quantizer};
use crate::simd::twin;
use crate::vectors::VectorsRef;
use rayon::prelude::*;

pub use crate::encode::scan::{scan_codes, scan_encoded, scan_sign};
pub use crate::kernels::{
    brute_force, exact_search, exact_search_allowing, scan_hamming, scan_hamming_with,
    HammingKernel,
};
pub use crate::pipeline::{Pipeline, Scorer, SearchParams, Stage};
pub use crate::rows::{Deleted, ListsRef, RowFilter, RowPart, Rows, Run};
pub use crate::topk::{rerank, Allow, CountTop, Hit, TopK};

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

/// A first stage over a partitioned code set: the `nprobe` lists nearest to each query (by the
/// encoder's coarse quantizer, one GEMM for the batch), then the codes of those lists scored
/// by the quantizer's list kernel ([`Quantizer::scan_lists_batch`]: blocked where the quantizer
/// laid its lists out, one distance per code otherwise), queries in parallel. Ties at the k-th distance are decided
/// by id, so the hits do not depend on list order: with every list probed they are the
/// hits of a full scan of the same codes.
pub fn scan_partitioned(
    encoder: &Encoder,
    codes: &[u8],
    lists: ListsRef<'_>,
    nprobe: usize,
    queries: VectorsRef<'_>,
    keep: usize,
    allow: Allow<'_>,
) -> Vec<Vec<Hit>> {
    let Some(coarse) = encoder.coarse() else {
        return scan_encoded(encoder, codes, queries, keep, allow);
    };
    let nq = queries.len();
    if nq == 0 {
        return Vec::new();
    }
    let probes = coarse.probe(queries, nprobe);
    let np = probes.len() / nq;
    let tq = encoder.transform_batch(queries);
    let residual = encoder.spec().residual;
    // residual codes: -q.x = -q.c - q.r, the code scoring the second term
    let adds: Vec<f32> = if residual {
        probes
            .par_chunks(np)
            .zip(queries.as_slice().par_chunks(queries.dim()))
            .flat_map_iter(|(probed, row)| probed.iter().map(|&l| -coarse.dot_centroid(row, l)))
            .collect()
    } else {
        vec![0.0; probes.len()]
    };
    with_quantizer!(encoder.quantizer(), q => {
        q.scan_lists_batch(tq.view(), codes, lists, &probes, np, &adds, keep, allow)
    })
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
    ///
    /// With a `filter` (which holds no deleted id), only its rows: the kernels' top-k
    /// structures skip every other row ([`Allow`]), so each part's hits are the best `keep`
    /// of its allowed rows. A partitioned stage probes `nprobe / f` lists for a part of which
    /// a fraction `f` is allowed (at most all), so the probed lists hold about as many
    /// allowed rows as an unfiltered search's.
    pub fn scan(
        &self,
        queries: VectorsRef<'_>,
        keep: usize,
        next: usize,
        deleted: &Deleted,
        filter: Option<&RowFilter>,
    ) -> Vec<Vec<Hit>> {
        if let Scored::Codes {
            bound: Some(eps),
            encoder,
            codes,
            nprobe,
        } = self
        {
            return scan_bound(
                encoder, codes, *nprobe, queries, next, *eps, deleted, filter,
            );
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
            let local;
            let (allow, allowed, extra) = match filter {
                None => (Allow::ALL, n, deleted.count_in(lo, hi.unwrap_or(lo))),
                Some(f) => match part.ids {
                    None => (
                        Allow::bits(f.words(), part.start),
                        f.count_in(lo, hi.unwrap_or(lo)),
                        0,
                    ),
                    Some(ids) => {
                        local = RowFilter::from_bits(part_bits(f, ids));
                        (Allow::bits(local.words(), 0), local.len(), 0)
                    }
                },
            };
            if allowed == 0 {
                continue;
            }
            let kp = keep.saturating_add(extra);
            let mut hits = match (self, part.lists) {
                (Scored::Exact { dim, metric, .. }, _) => exact_search_allowing(
                    VectorsRef::new(*dim, bytemuck::cast_slice(part.data))
                        .expect("invariant: whole rows"),
                    queries,
                    *metric,
                    kp,
                    allow,
                ),
                (
                    Scored::Codes {
                        encoder,
                        nprobe: Some(np),
                        ..
                    },
                    Some(lists),
                ) => {
                    let nlist = lists.offsets.len().saturating_sub(1).max(1);
                    let np = (*np as u128 * n as u128).div_ceil(allowed as u128);
                    let np = np.min(nlist as u128) as usize;
                    scan_partitioned(encoder, part.data, lists, np, queries, kp, allow)
                }
                (Scored::Codes { encoder, .. }, _) => {
                    scan_encoded(encoder, part.data, queries, kp, allow)
                }
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
    run_stages_counted(stages, queries, k, deleted, None).0
}

/// [`run_stages`], also counting the hits each stage passed on (summed over the queries),
/// over the rows of `filter` only when one is given (it must hold no deleted id).
///
/// A filtered search is a pre-filter, never a cut of unfiltered candidates: when the
/// filter's rows are few (their rows of the last stage cost less to read than the first
/// stage's scan of every row), they are scored directly by the last stage, which gives
/// exactly its top `k` of the allowed rows; otherwise the first stage scans the allowed
/// rows only ([`Scored::scan`]) and later stages rerank its survivors as usual.
pub fn run_stages_counted(
    stages: &[(Scored<'_>, usize)],
    queries: VectorsRef<'_>,
    k: usize,
    deleted: &Deleted,
    filter: Option<&RowFilter>,
) -> (Vec<Vec<Hit>>, Vec<usize>) {
    let Some(((first, keep), rest)) = stages.split_first() else {
        return (vec![Vec::new(); queries.len()], Vec::new());
    };
    if let Some(f) = filter {
        if f.is_empty() {
            return (vec![Vec::new(); queries.len()], vec![0; stages.len()]);
        }
        if let Some(hits) = score_few(stages, queries, k, f) {
            let mut counts = vec![0; stages.len()];
            counts[stages.len() - 1] = hits.iter().map(Vec::len).sum();
            return (hits, counts);
        }
    }
    let next = rest.first().map_or(k, |(_, n)| *n).min(*keep);
    let mut out = Vec::with_capacity(queries.len());
    let mut counts = vec![0; stages.len()];
    // A chunk of queries at a time through every stage: the candidate lists of the whole
    // batch (queries x keep hits) would be fresh memory the kernel zeroes page by page (17% of
    // a SciFact cascade's time); a chunk's are reused by the next chunk.
    for start in (0..queries.len()).step_by(RUN_CHUNK) {
        let qs = queries.slice(start, (start + RUN_CHUNK).min(queries.len()));
        let mut hits = first.scan(qs, *keep, next, deleted, filter);
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

/// A filter allowing at most one row in this many is scored by the last stage alone.
const FEW_FRACTION: usize = 8;

/// Below this many queries, [`score_few`] scores the allowed rows in place, query by query;
/// from it on, gathered into one block once for all the queries.
const FEW_QUERIES: usize = 16;

/// Allowed rows one rayon task of [`score_few`] scores for one query.
const FEW_CHUNK: usize = 8192;

/// The rows of `filter` scored by the last stage alone, when they are few enough: their rows
/// of the last stage (gathered into one block, then scanned with its kernel) take fewer bytes
/// than the first stage's rows of every id it would scan, or they are at most one row in
/// [`FEW_FRACTION`]. `None` when they are not few, when
/// the pipeline is one stage (its own scan skips the other rows at the same cost), or when
/// the last stage is partitioned (its rows are in list order, not found by id).
fn score_few(
    stages: &[(Scored<'_>, usize)],
    queries: VectorsRef<'_>,
    k: usize,
    filter: &RowFilter,
) -> Option<Vec<Vec<Hit>>> {
    let (first, _) = stages.first()?;
    let (last, _) = stages.last()?;
    if stages.len() < 2 {
        return None;
    }
    if let Scored::Codes {
        nprobe: Some(_), ..
    } = last
    {
        return None;
    }
    let held: usize = first.rows().parts().iter().map(|p| p.data.len()).sum();
    let rows = held / first.rows().row_len().max(1);
    let need = filter.len().saturating_mul(last.rows().row_len());
    // Few: cheaper to read than the first stage's codes, or at most an eighth of the rows.
    // The second rule is for recall, not speed: a selective filter leaves each query few
    // close allowed rows, and its top k then reaches rows at nearly equal distances, which
    // codes cannot order (1M x 768 synthetic, 16-byte codes, keep 100: recall@10 0.89 at a
    // tenth of the rows, 0.31 at a hundredth, against 1.0 scored by the last stage).
    if need > held && filter.len().saturating_mul(FEW_FRACTION) > rows {
        return None;
    }
    if queries.len() < FEW_QUERIES {
        // a few queries: each scores the allowed rows where they lie (one pass over them;
        // gathering them first and a GEMM took 3 passes, 7x the time of a single query)
        let held: Vec<Hit> = filter
            .ids()
            .filter(|&id| last.rows().try_row(id).is_some())
            .map(|id| Hit { id, distance: 0.0 })
            .collect();
        return Some(
            (0..queries.len())
                .map(|qi| {
                    let q = queries.row(qi);
                    let mut all: Vec<Hit> = held
                        .par_chunks(FEW_CHUNK)
                        .flat_map_iter(|c| last.rerank(q, c, k))
                        .collect();
                    all.sort_unstable();
                    all.truncate(k);
                    all
                })
                .collect(),
        );
    }
    // the rows held (a filter may name ids a compaction removed)
    let len = last.rows().row_len();
    let mut ids: Vec<u32> = Vec::with_capacity(filter.len());
    let mut data: Vec<u8> = Vec::with_capacity(filter.len() * len);
    for id in filter.ids() {
        if let Some(row) = last.rows().try_row(id) {
            ids.push(id);
            data.extend_from_slice(row);
        }
    }
    if ids.is_empty() {
        return Some(vec![Vec::new(); queries.len()]);
    }
    let rows = Rows::new(
        len,
        vec![RowPart {
            start: 0,
            ids: Some(&ids),
            data: &data,
            lists: None,
        }],
    );
    let gathered = match last {
        Scored::Exact { dim, metric, .. } => Scored::Exact {
            vectors: rows,
            dim: *dim,
            metric: *metric,
        },
        Scored::Codes { encoder, .. } => Scored::Codes {
            encoder,
            codes: rows,
            nprobe: None,
            bound: None,
        },
    };
    Some(gathered.scan(queries, k, k, &Deleted::default(), None))
}

/// The bits of `filter` for the rows of a part whose row `j` has id `ids[j]`.
fn part_bits(filter: &RowFilter, ids: &[u32]) -> Vec<u64> {
    let mut bits = vec![0u64; ids.len().div_ceil(64)];
    for (j, &id) in ids.iter().enumerate() {
        if filter.contains(id) {
            bits[j / 64] |= 1 << (j % 64);
        }
    }
    bits
}

/// A first stage of RaBitQ codes keeping every code its error bound cannot rule out of the
/// best `next` (see [`RabitqQuantizer::scan_bound`]), part by part; deleted ids are dropped,
/// and with a `filter` only its rows are offered.
#[allow(clippy::too_many_arguments)]
fn scan_bound(
    encoder: &Encoder,
    codes: &Rows<'_>,
    nprobe: Option<usize>,
    queries: VectorsRef<'_>,
    next: usize,
    eps: f32,
    deleted: &Deleted,
    filter: Option<&RowFilter>,
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
        let local;
        let (allow, kp) = match filter {
            None => (
                Allow::ALL,
                next.saturating_add(deleted.count_in(lo, hi.unwrap_or(lo))),
            ),
            Some(f) => match part.ids {
                None => (Allow::bits(f.words(), part.start), next),
                Some(ids) => {
                    local = part_bits(f, ids);
                    (Allow::bits(&local, 0), next)
                }
            },
        };
        let hits: Vec<Vec<Hit>> = match (encoder.coarse(), part.lists, nprobe) {
            (Some(coarse), Some(lists), Some(_)) => {
                let npr = probes.len() / nq.max(1);
                let residual = encoder.spec().residual;
                (0..nq)
                    .into_par_iter()
                    .map(|i| {
                        let p = q.prepare(tq.row(i));
                        let parts: Vec<_> = probes[i * npr..(i + 1) * npr]
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
                        q.bound_lists(&p, &parts, kp, eps, allow)
                    })
                    .collect()
            }
            _ => q.scan_bound(tq.view(), part.data, kp, eps, allow),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encode::scan::scan_block;
    #[cfg(target_arch = "x86_64")]
    use crate::encode::scan::scan_block_avx2;
    use crate::encode::scan::scan_block_baseline;

    /// Every twin gives the same result from both compilations (on a CPU without AVX2 only
    /// the baseline runs; CI also runs the suite with `REWA_NO_AVX2=1`).
    #[test]
    fn avx2_twins_equal_baseline_for_every_quantizer() {
        let base = crate::testutil::gaussian(3000, 77, 11);
        let qs = crate::testutil::gaussian(9, 77, 12);
        for metric in [Metric::Ip, Metric::L2] {
            for spec in ["flat", "sign", "asign", "int8", "pq7", "hadamard64+int8"] {
                let enc = Encoder::fit(&spec.parse().unwrap(), base.view(), metric, 3).unwrap();
                let codes = enc.encode_batch(base.view()).unwrap();
                let code_rows = Rows::single(enc.code_len(), &codes);
                let vec_rows = Rows::single(4 * 77, bytemuck::cast_slice(base.as_slice()));
                let tq = enc.transform_batch(qs.view());
                with_quantizer!(enc.quantizer(), q => {
                    let prepared = q.prepare_batch(tq.view());
                    let base_hits = scan_block_baseline(q, &prepared, &codes, 50, Allow::ALL);
                    let prev: Vec<Hit> = base_hits[0].clone();
                    let re = rerank_codes_baseline(q, &prepared[0], &code_rows, &prev, 10);
                    let ex = rerank_exact_baseline(&vec_rows, metric, qs.row(0), &prev, 10);
                    #[cfg(target_arch = "x86_64")]
                    if crate::simd::avx2() {
                        // SAFETY: checked just above.
                        unsafe {
                            assert_eq!(scan_block_avx2(q, &prepared, &codes, 50, Allow::ALL), base_hits, "{spec}");
                            assert_eq!(rerank_codes_avx2(q, &prepared[0], &code_rows, &prev, 10), re);
                            assert_eq!(rerank_exact_avx2(&vec_rows, metric, qs.row(0), &prev, 10), ex);
                        }
                    }
                    // and the dispatching entry points agree with the baseline
                    assert_eq!(scan_block(q, &prepared, &codes, 50, Allow::ALL), base_hits, "{spec}");
                    assert_eq!(rerank_codes(q, &prepared[0], &code_rows, &prev, 10), re);
                });
            }
        }
    }
}
