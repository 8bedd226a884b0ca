//! Exact search: the top-`k` of every query by blocked GEMM ([`exact_search`]), and the
//! brute-force reference it is tested against ([`brute_force`]).

use super::{query_block, sharded};
use crate::distance::Metric;
use crate::simd::twin;
use crate::topk::{Allow, Hit, TopK};
use crate::vectors::VectorsRef;
use rayon::prelude::*;

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

/// Exact top-`k` of every query over `base` (blocked GEMM, rayon over query blocks; a few
/// queries over a large base split the base between threads instead).
/// For cosine, inputs must already be normalised.
pub fn exact_search(
    base: VectorsRef<'_>,
    queries: VectorsRef<'_>,
    metric: Metric,
    k: usize,
) -> Vec<Vec<Hit>> {
    exact_search_allowing(base, queries, metric, k, Allow::ALL)
}

/// [`exact_search`] over the rows of `base` that `allow` allows.
pub fn exact_search_allowing(
    base: VectorsRef<'_>,
    queries: VectorsRef<'_>,
    metric: Metric,
    k: usize,
    allow: Allow<'_>,
) -> Vec<Vec<Hit>> {
    sharded(
        base.len(),
        queries.len(),
        k.min(base.len()).max(1),
        |a, b| {
            exact_search_serial(
                base.slice(a, b),
                queries,
                metric,
                k,
                allow.shifted(a as u32),
            )
        },
    )
}

fn exact_search_serial(
    base: VectorsRef<'_>,
    queries: VectorsRef<'_>,
    metric: Metric,
    k: usize,
    allow: Allow<'_>,
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
            let mut tops: Vec<TopK> = (0..nq).map(|_| TopK::allowing(k, allow)).collect();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::gaussian;

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

    /// The AVX2 twin of `row_norms` gives the same norms as the baseline (on a CPU without
    /// AVX2 both run the baseline; CI also runs the suite with `REWA_NO_AVX2=1`).
    #[test]
    fn row_norms_twins_agree() {
        let base = gaussian(3000, 77, 11);
        assert_eq!(row_norms_baseline(base.view()), row_norms(base.view()));
        #[cfg(target_arch = "x86_64")]
        if crate::simd::avx2() {
            // SAFETY: checked just above.
            assert_eq!(
                unsafe { row_norms_avx2(base.view()) },
                row_norms_baseline(base.view())
            );
        }
    }
}
