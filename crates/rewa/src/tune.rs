//! [`tune`]: the keeps of an index's pipeline (and the lists a partitioned first stage probes)
//! that reach a target recall at the highest QPS.
//!
//! Every combination of keeps (powers of two times k, up to `max_keep`) and, for an
//! `ivf<nlist>/<nprobe>` first stage, of `nprobe` (1, 2, 4, ... `nlist`) is measured in
//! ascending order, skipping a setting whose every value is at least that of one that already
//! met the target (more work for recall that is not needed). The doubling grid overshoots by up
//! to 2x, so the fastest setting that met the target is then refined value by value: three
//! bisection steps between half its keep (or nprobe) and its keep. A pipeline with no keep left
//! to tune (one stage, e.g. `ivf128/8+flat:10`) tunes its `nprobe` alone.
//!
//! Ground truth is exact search, over the first of: the vectors given as `base` (those the
//! index was built from and added, in id order; deleted rows are left out), the index's float
//! vectors (an `exact` stage), or its `flat` codes (a code set without transforms: its codes
//! are the vectors, so scanning all of them, every list probed, is exact search). An index
//! with none of these cannot be tuned. A time budget bounds the whole run: when it is spent, the best
//! setting found so far is returned and the report says so.
//!
//! A setting meets the target when the lower confidence bound of its recall does (one-sided,
//! normal approximation over the per-query recalls, `confidence` 0.95 by default), not its
//! mean: the mean over a few hundred tuning queries is itself a noisy estimate, and a keep
//! chosen to land exactly on the target fell short of it on held-out queries (SciFact
//! sentences: 0.950 on 300 tuning queries, 0.930 on 809 held-out ones).

use crate::encode::QuantizerSpec;
use crate::error::{invalid, Error, Result};
use crate::eval::recall_at_k;
use crate::search::{Hit, Pipeline, Scorer, SearchParams, Stage};
use crate::vectors::Prepared;
use crate::Index;
use std::time::Instant;

/// What to tune for.
#[derive(Clone, Debug)]
pub struct TuneOptions {
    /// Neighbours per query.
    pub k: usize,
    /// Target recall@k, in (0, 1].
    pub target_recall: f64,
    /// Largest keep tried for any stage (default: the index size).
    pub max_keep: Option<usize>,
    /// Time budget in seconds; when spent, the best setting so far is returned.
    pub max_seconds: f64,
    /// One-sided confidence, in [0, 1), that a chosen setting's recall on queries like the
    /// tuning ones reaches the target; 0 compares the tuning queries' mean recall itself.
    pub confidence: f64,
}

impl Default for TuneOptions {
    fn default() -> Self {
        TuneOptions {
            k: 10,
            target_recall: 0.95,
            max_keep: None,
            max_seconds: 300.0,
            confidence: 0.95,
        }
    }
}

/// One measured setting.
#[derive(serde::Serialize, Clone, Debug)]
pub struct TunePoint {
    /// The pipeline measured.
    pub pipeline: String,
    /// Its recall@k on the tuning queries.
    pub recall_at_k: f64,
    /// The lower confidence bound of that recall (equal to it at confidence 0): what is
    /// compared with the target.
    pub recall_lower: f64,
    /// Its queries per second.
    pub qps: f64,
}

/// What [`tune`] found: the JSON `rewa tune --json` prints.
#[derive(serde::Serialize, Clone, Debug)]
pub struct TuneReport {
    /// The chosen pipeline: the fastest that met the target, else the one of best recall.
    pub pipeline: String,
    /// Its recall@k.
    pub recall_at_k: f64,
    /// The lower confidence bound of that recall, which met the target (if any did).
    pub recall_lower: f64,
    /// The confidence of that bound.
    pub confidence: f64,
    /// Its QPS.
    pub qps: f64,
    /// Whether some setting reached the target.
    pub target_met: bool,
    /// Whether the time budget ran out before every setting was measured.
    pub timed_out: bool,
    /// Seconds spent.
    pub seconds: f64,
    /// Every setting measured, in order.
    pub curve: Vec<TunePoint>,
    #[serde(skip)]
    chosen: Option<Pipeline>,
}

impl TuneReport {
    /// The chosen pipeline, ready for [`Index::set_pipeline`].
    pub fn chosen(&self) -> &Pipeline {
        self.chosen
            .as_ref()
            .expect("invariant: tune chose a pipeline")
    }
}

/// Progress of a [`tune`] run, for a progress bar.
#[derive(Clone, Debug)]
pub struct TuneProgress<'a> {
    /// Settings measured or skipped so far.
    pub done: usize,
    /// Settings planned (the grid plus the refinement steps at most).
    pub total: usize,
    /// The setting just measured.
    pub point: &'a TunePoint,
}

/// Checks the options against an index of `n` vectors.
fn check(opts: &TuneOptions, n: usize) -> Result<()> {
    let k = opts.k;
    if k == 0 {
        return invalid!("k must be at least 1");
    }
    if k > n {
        return invalid!("k = {k}, but the index holds only {n} vectors");
    }
    if !(opts.confidence.is_finite() && (0.0..1.0).contains(&opts.confidence)) {
        return invalid!(
            "the confidence must be in [0, 1) (0: compare the mean recall), got {}",
            opts.confidence
        );
    }
    if !(opts.target_recall.is_finite() && opts.target_recall > 0.0 && opts.target_recall <= 1.0) {
        return invalid!(
            "the target recall must be in (0, 1], got {}",
            opts.target_recall
        );
    }
    if let Some(m) = opts.max_keep {
        if m < k {
            return invalid!("the largest keep ({m}) must be at least k = {k}");
        }
    }
    if !(opts.max_seconds.is_finite() && opts.max_seconds > 0.0) {
        return invalid!(
            "the time budget must be a positive number of seconds, got {}",
            opts.max_seconds
        );
    }
    Ok(())
}

/// What [`tune_on`] measures with: validation queries, and optionally the vectors the index
/// was built from, for ground truth when the index stores neither float vectors nor flat
/// codes.
#[derive(Clone, Copy, Debug)]
pub struct TuneData<'a> {
    /// Validation queries (never the ones reported on), prepared for the index's metric.
    pub queries: &'a Prepared<'a>,
    /// Every vector the index gave an id, in id order (row `i` has id `i`; deleted rows are
    /// left out of the ground truth), prepared for the index's metric.
    pub base: Option<&'a Prepared<'a>>,
}

/// Measures keeps for `index`'s default pipeline on `queries` (validation queries, never the
/// ones reported on) and returns the curve and the chosen setting; the caller stores it with
/// [`Index::set_pipeline`]. Ground truth comes from the index ([`tune_on`] takes the base
/// vectors for an index that has none).
pub fn tune(
    index: &Index,
    queries: &Prepared<'_>,
    opts: &TuneOptions,
    progress: &mut dyn FnMut(&TuneProgress<'_>),
) -> Result<TuneReport> {
    tune_on(
        index,
        TuneData {
            queries,
            base: None,
        },
        opts,
        progress,
    )
}

/// The exact top-`k` of every query among the index's live rows: from `base` if given, else
/// from the index's float vectors, else from its flat codes.
fn ground_truth(index: &Index, data: TuneData<'_>, k: usize) -> Result<Vec<Vec<Hit>>> {
    let queries = data.queries;
    if let Some(base) = data.base {
        if base.dim() != index.dim() {
            return Err(Error::DimMismatch {
                expected: index.dim(),
                got: base.dim(),
            });
        }
        if base.metric() != index.metric() {
            return invalid!(
                "base vectors prepared for {} given to an index of metric {}",
                base.metric(),
                index.metric()
            );
        }
        if base.len() != index.next_id() {
            return invalid!(
                "the base holds {} vectors, but the index gave out ids 0..{}: give every vector it was built from and added, in order (row i is id i)",
                base.len(),
                index.next_id()
            );
        }
        let live: Vec<u32> = index.live_ids().collect();
        if live.len() == base.len() {
            return Ok(crate::eval::ground_truth(base, queries, k));
        }
        let kept = index.metric().prepare_owned(base.view().gather(&live))?;
        let mut gt = crate::eval::ground_truth(&kept, queries, k);
        for h in gt.iter_mut().flatten() {
            h.id = live[h.id as usize];
        }
        return Ok(gt);
    }
    let stage = if index.has_vectors() {
        Stage::new(Scorer::Exact, k)
    } else if let Some(e) = index
        .encoders()
        .iter()
        .find(|e| e.spec().transforms.is_empty() && e.spec().quantizer == QuantizerSpec::Flat)
    {
        // flat codes are the vectors: scanning every list of them is exact search
        let spec = e.spec().clone();
        Stage {
            nprobe: spec.ivf,
            ..Stage::new(Scorer::Codes(spec), k)
        }
    } else {
        return invalid!(
            "tuning needs ground truth, and this index stores neither float vectors nor flat codes: give the vectors it was built from (--base FILE; base= in Python), or build with a pipeline that has an exact stage"
        );
    };
    index.search_prepared(
        queries,
        &SearchParams {
            k,
            pipeline: Some(Pipeline::new(vec![stage])?),
            filter: None,
        },
    )
}

/// [`tune`] with the ground truth taken from `data.base` when given.
pub fn tune_on(
    index: &Index,
    data: TuneData<'_>,
    opts: &TuneOptions,
    progress: &mut dyn FnMut(&TuneProgress<'_>),
) -> Result<TuneReport> {
    let queries = data.queries;
    let started = Instant::now();
    let n = index.len();
    check(opts, n)?;
    if queries.dim() != index.dim() {
        return Err(Error::DimMismatch {
            expected: index.dim(),
            got: queries.dim(),
        });
    }
    let k = opts.k;
    let base = index.pipeline().clone();
    if base.stages().iter().any(|s| s.bound.is_some()) {
        return invalid!(
            "pipeline {base}: a bound stage keeps what its error bound requires; there is no keep to tune (raise its constant, e.g. :bound=3, for more recall)"
        );
    }
    let gt = ground_truth(index, data, k)?;
    // A setting is [nprobe (a partitioned first stage only), keep of every stage but the last].
    let np_dims = usize::from(base.nprobe().is_some());
    let free = base.stages().len() - 1;
    // Candidate keeps for every stage but the last (which keeps k): k * 2^i up to the cap.
    let top = opts.max_keep.unwrap_or(n).clamp(k, n);
    let mut cands: Vec<usize> =
        std::iter::successors(Some(k.saturating_mul(2)), |c| c.checked_mul(2))
            .take_while(|&c| c < top)
            .collect();
    cands.push(top);
    let mut grid: Vec<Vec<usize>> = vec![vec![]];
    if let Some(nlist) = base.nlist() {
        // lists probed: 1, 2, 4, ... nlist
        let mut probes: Vec<usize> = std::iter::successors(Some(1usize), |c| c.checked_mul(2))
            .take_while(|&c| c < nlist)
            .collect();
        probes.push(nlist);
        grid = probes.into_iter().map(|p| vec![p]).collect();
    }
    for _ in 0..free {
        grid = grid
            .into_iter()
            .flat_map(|g| {
                let cap = g[np_dims..].last().copied().unwrap_or(usize::MAX);
                cands
                    .iter()
                    .filter(move |&&c| c <= cap)
                    .map(move |&c| [g.clone(), vec![c]].concat())
                    .collect::<Vec<_>>()
            })
            .collect();
    }
    let dims = np_dims + free;
    let total = grid.len() + 3 * dims;
    let z = normal_quantile(opts.confidence);
    let meets = |p: &TunePoint| p.recall_lower >= opts.target_recall;
    let mut done = 0;
    let mut curve: Vec<(Pipeline, TunePoint, Vec<usize>)> = Vec::new();
    let mut timed_out = false;
    let mut measure = |setting: &[usize], done: usize| -> Result<(Pipeline, TunePoint)> {
        let mut all = setting[np_dims..].to_vec();
        all.push(k);
        let mut p = base.with_keeps(&all)?;
        if np_dims == 1 {
            p = p.with_nprobe(setting[0])?;
        }
        let t = Instant::now();
        let hits = index.search_prepared(
            queries,
            &SearchParams {
                k,
                pipeline: Some(p.clone()),
                filter: None,
            },
        )?;
        let qps = queries.len() as f64 / t.elapsed().as_secs_f64().max(1e-9);
        let (recall, lower) = recall_bound(&hits, &gt, k, z);
        debug_assert!((recall - recall_at_k(&hits, &gt, k)).abs() < 1e-9);
        let point = TunePoint {
            pipeline: p.to_string(),
            recall_at_k: recall,
            recall_lower: lower,
            qps,
        };
        progress(&TuneProgress {
            done,
            total,
            point: &point,
        });
        Ok((p, point))
    };
    let out_of_time = |started: &Instant| started.elapsed().as_secs_f64() > opts.max_seconds;
    let mut met_keeps: Vec<Vec<usize>> = Vec::new();
    for keeps in grid {
        done += 1;
        if met_keeps
            .iter()
            .any(|m| m.iter().zip(&keeps).all(|(m, c)| c >= m))
        {
            continue;
        }
        if !curve.is_empty() && out_of_time(&started) {
            timed_out = true;
            break;
        }
        let (p, point) = measure(&keeps, done)?;
        if meets(&point) {
            met_keeps.push(keeps.clone());
        }
        curve.push((p, point, keeps));
    }
    let best_met = |c: &[(Pipeline, TunePoint, Vec<usize>)]| {
        c.iter()
            .filter(|c| meets(&c.1))
            .max_by(|a, b| a.1.qps.total_cmp(&b.1.qps))
            .cloned()
    };
    let mut refined = best_met(&curve);
    if let Some(start) = refined.clone() {
        let mut keeps = start.2;
        'stages: for s in 0..dims {
            let floor = if s < np_dims {
                1
            } else {
                keeps.get(s + 1).copied().unwrap_or(k)
            };
            let (mut lo, mut hi) = ((keeps[s] / 2).max(floor), keeps[s]);
            for _ in 0..3 {
                let mid = (lo + hi) / 2;
                if mid <= lo || mid >= hi {
                    break;
                }
                if out_of_time(&started) {
                    timed_out = true;
                    break 'stages;
                }
                let mut trial = keeps.clone();
                trial[s] = mid;
                done += 1;
                let (p, point) = measure(&trial, done)?;
                let entry = (p, point, trial.clone());
                curve.push(entry.clone());
                if meets(&entry.1) {
                    hi = mid;
                    keeps = trial;
                    refined = Some(entry);
                } else {
                    lo = mid;
                }
            }
        }
    }
    let target_met = refined.is_some();
    let chosen = match refined {
        Some(c) => c,
        None => curve
            .iter()
            .max_by(|a, b| a.1.recall_lower.total_cmp(&b.1.recall_lower))
            .cloned()
            .expect("invariant: the first setting is always measured"),
    };
    Ok(TuneReport {
        pipeline: chosen.0.to_string(),
        recall_at_k: chosen.1.recall_at_k,
        recall_lower: chosen.1.recall_lower,
        confidence: opts.confidence,
        qps: chosen.1.qps,
        target_met,
        timed_out,
        seconds: started.elapsed().as_secs_f64(),
        curve: curve.into_iter().map(|c| c.1).collect(),
        chosen: Some(chosen.0),
    })
}

/// Mean per-query recall@k and its one-sided lower bound `mean - z * sd / sqrt(n)` (normal
/// approximation; `z` 0 gives the mean).
fn recall_bound(hits: &[Vec<Hit>], gt: &[Vec<Hit>], k: usize, z: f64) -> (f64, f64) {
    let per: Vec<f64> = hits
        .iter()
        .zip(gt)
        .map(|(h, g)| recall_at_k(std::slice::from_ref(h), std::slice::from_ref(g), k))
        .collect();
    let n = per.len().max(1) as f64;
    let mean = per.iter().sum::<f64>() / n;
    if per.len() < 2 || z == 0.0 {
        return (mean, mean);
    }
    let var = per.iter().map(|r| (r - mean) * (r - mean)).sum::<f64>() / (n - 1.0);
    (mean, mean - z * (var / n).sqrt())
}

/// The standard normal quantile of `p` in [0.5, 1) (0 for `p` below 0.5, so confidence 0 means
/// no margin): Abramowitz and Stegun 26.2.23, absolute error below 4.5e-4.
fn normal_quantile(p: f64) -> f64 {
    if p <= 0.5 {
        return 0.0;
    }
    let t = (-2.0 * (1.0 - p).ln()).sqrt();
    t - (2.515517 + 0.802853 * t + 0.010328 * t * t)
        / (1.0 + 1.432788 * t + 0.189269 * t * t + 0.001308 * t * t * t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_quantiles_and_the_recall_bound() {
        for (p, z) in [
            (0.5, 0.0),
            (0.8413, 1.0),
            (0.95, 1.6449),
            (0.975, 1.96),
            (0.999, 3.0902),
        ] {
            assert!(
                (normal_quantile(p) - z).abs() < 1e-3,
                "{p}: {}",
                normal_quantile(p)
            );
        }
        assert_eq!(normal_quantile(0.0), 0.0);
        let hit = |id| Hit { id, distance: 0.0 };
        // four queries, k 2: recalls 1, 1, 0.5, 0.5 -> mean 0.75, sd 0.2887
        let gt: Vec<Vec<Hit>> = (0..4).map(|i| vec![hit(2 * i), hit(2 * i + 1)]).collect();
        let hits: Vec<Vec<Hit>> = (0..4)
            .map(|i| {
                if i < 2 {
                    vec![hit(2 * i), hit(2 * i + 1)]
                } else {
                    vec![hit(2 * i), hit(99)]
                }
            })
            .collect();
        let (mean, lower) = recall_bound(&hits, &gt, 2, 1.6449);
        assert!((mean - 0.75).abs() < 1e-12);
        assert!(
            (lower - (0.75 - 1.6449 * 0.288_675_1 / 2.0)).abs() < 1e-6,
            "{lower}"
        );
        assert_eq!(recall_bound(&hits, &gt, 2, 0.0), (0.75, 0.75));
    }
}
