//! Scan kernels, below the encoders and the stage runner: exact search by GEMM
//! ([`exact_search`], with its brute-force reference), the Hamming scans of sign codes
//! ([`scan_hamming`]), and how a scan splits its work between threads ([`query_block`],
//! [`sharded`]). Each wide (AVX2 / AVX-512) kernel sits next to its scalar twin and the test
//! that they agree.
//!
//! Nothing here knows an encoder, an index or a pipeline: these files import only top-k,
//! vectors, distances, `linalg` and `simd`. (The scans generic over a `Quantizer` live with
//! that trait, in `encode::scan`.)

mod exact;
mod hamming;

pub use exact::{brute_force, exact_search, exact_search_allowing};
pub use hamming::{
    hamming_kernel, hamming_run, layout_words, scan_hamming, scan_hamming_with, HammingKernel,
};

use crate::topk::Hit;
use rayon::prelude::*;

/// Queries scanned together as one block (a rayon task).
pub(crate) fn query_block(nq: usize) -> usize {
    // Few large blocks: a GEMM re-packs its base block once per query block, and a code scan
    // streams each code block once per query block.
    let threads = rayon::current_num_threads().max(1);
    nq.div_ceil(threads).clamp(1, 512)
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
