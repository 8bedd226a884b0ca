//! Quality measures: recall@k against exact search, label precision@k, and BEIR-style
//! nDCG@10 / recall@100 from qrels; and [`evaluate`], the whole flow behind `rewa eval` and
//! `rewa bench` (fit on train, encode the base, search held-out queries, score, time).

use crate::error::{invalid, Error, Result};
use crate::kernels::exact_search;
pub use crate::latency::Latencies;
use crate::pipeline::{Pipeline, Scorer};
use crate::topk::Hit;
use crate::vectors::Prepared;
use crate::{Index, IndexSpec};
use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

/// Mean over queries of `|top-k of results ∩ top-k of truth| / k`.
pub fn recall_at_k(results: &[Vec<Hit>], truth: &[Vec<Hit>], k: usize) -> f64 {
    if results.is_empty() {
        return 0.0;
    }
    let total: f64 = results
        .iter()
        .zip(truth)
        .map(|(r, t)| {
            let kk = k.min(t.len()).max(1);
            let want: Vec<u32> = t.iter().take(kk).map(|h| h.id).collect();
            r.iter().take(k).filter(|h| want.contains(&h.id)).count() as f64 / kk as f64
        })
        .sum();
    total / results.len() as f64
}

/// Mean share of the top-`k` whose label equals the query's. With `exclude` set, query `i`'s
/// own id `exclude[i]` is skipped (when queries are drawn from the base itself).
pub fn label_precision_at_k(
    results: &[Vec<Hit>],
    query_labels: &[i64],
    base_labels: &[i64],
    k: usize,
    exclude: Option<&[u32]>,
) -> f64 {
    let mut total = 0.0;
    for (i, r) in results.iter().enumerate() {
        let own = exclude.map(|e| e[i]);
        let top: Vec<&Hit> = r.iter().filter(|h| Some(h.id) != own).take(k).collect();
        let good = top
            .iter()
            .filter(|h| base_labels[h.id as usize] == query_labels[i])
            .count();
        total += good as f64 / k as f64;
    }
    total / results.len().max(1) as f64
}

/// Relevance judgements mapped onto row numbers: for each query row, (base row, grade).
#[derive(Clone, Debug, Default)]
pub struct Qrels {
    per_query: HashMap<usize, Vec<(u32, f32)>>,
    /// Lengths of the id lists (`None` for judgements given as row pairs).
    id_rows: Option<(usize, usize)>,
}

/// One id per line, in row order; an empty line or a repeated id is an error (either would
/// shift or merge rows and make nDCG silently wrong).
fn read_ids(path: &Path) -> Result<(HashMap<String, usize>, usize)> {
    crate::io::check_readable(path, crate::io::MAX_TEXT_BYTES)?;
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let text = text.strip_suffix('\n').unwrap_or(&text);
    let mut map = HashMap::new();
    let mut n = 0;
    for (i, line) in text.split('\n').enumerate() {
        let id = line.trim();
        if id.is_empty() {
            return invalid!(
                "{}: line {} is empty (one id per row)",
                path.display(),
                i + 1
            );
        }
        if let Some(first) = map.insert(id.to_string(), i) {
            return invalid!(
                "{}: id {id:?} on line {} repeats line {} (ids must be unique)",
                path.display(),
                i + 1,
                first + 1
            );
        }
        n += 1;
    }
    Ok((map, n))
}

impl Qrels {
    /// Loads a BEIR qrels TSV (`query-id  corpus-id  score`, header optional) and maps its ids
    /// to rows with the id lists (one id per line, row order). Pairs whose ids are not in the
    /// lists are skipped; a file with no usable pair is an error.
    pub fn load(tsv: &Path, doc_ids: &Path, query_ids: &Path) -> Result<Qrels> {
        let (docs, n_docs) = read_ids(doc_ids)?;
        let (queries, n_queries) = read_ids(query_ids)?;
        Qrels::load_mapped(tsv, docs, n_docs, queries, n_queries)
    }

    /// [`Qrels::load`] with the ids of the rows in memory (`doc_ids[i]` names base row i),
    /// e.g. as read from the texts the vectors were embedded from.
    pub fn load_with_ids(tsv: &Path, doc_ids: &[String], query_ids: &[String]) -> Result<Qrels> {
        let map = |ids: &[String], what: &str| -> Result<HashMap<String, usize>> {
            let mut m = HashMap::with_capacity(ids.len());
            for (i, id) in ids.iter().enumerate() {
                if m.insert(id.clone(), i).is_some() {
                    return invalid!("{what} id {id:?} names two rows (ids must be unique)");
                }
            }
            Ok(m)
        };
        let docs = map(doc_ids, "document")?;
        let queries = map(query_ids, "query")?;
        Qrels::load_mapped(tsv, docs, doc_ids.len(), queries, query_ids.len())
    }

    fn load_mapped(
        tsv: &Path,
        docs: HashMap<String, usize>,
        n_docs: usize,
        queries: HashMap<String, usize>,
        n_queries: usize,
    ) -> Result<Qrels> {
        crate::io::check_readable(tsv, crate::io::MAX_TEXT_BYTES)?;
        let text = std::fs::read_to_string(tsv).map_err(|e| Error::io(tsv, e))?;
        let mut per_query: HashMap<usize, Vec<(u32, f32)>> = HashMap::new();
        for (ln, line) in text.lines().enumerate() {
            let f: Vec<&str> = line.split('\t').map(str::trim).collect();
            if f.len() < 3 {
                if line.trim().is_empty() {
                    continue;
                }
                return Err(Error::InvalidInput(format!(
                    "{}: line {}: expected 3 tab-separated fields",
                    tsv.display(),
                    ln + 1
                )));
            }
            let Ok(score) = f[2].parse::<f32>() else {
                if ln == 0 {
                    continue; // header
                }
                return Err(Error::InvalidInput(format!(
                    "{}: line {}: bad score {:?}",
                    tsv.display(),
                    ln + 1,
                    f[2]
                )));
            };
            if let (Some(&q), Some(&d)) = (queries.get(f[0]), docs.get(f[1])) {
                per_query.entry(q).or_default().push((d as u32, score));
            }
        }
        if per_query.is_empty() {
            return Err(Error::InvalidInput(format!(
                "{}: no pair matches the given query and document ids",
                tsv.display()
            )));
        }
        Ok(Qrels {
            per_query,
            id_rows: Some((n_docs, n_queries)),
        })
    }

    /// Fails unless the id lists this was loaded with have one id per base row and per query
    /// row (otherwise every id would name the wrong row).
    pub fn check_rows(&self, docs: usize, queries: usize) -> Result<()> {
        if let Some((d, q)) = self.id_rows {
            if d != docs {
                return invalid!(
                    "the document id list holds {d} ids, but the base holds {docs} vectors"
                );
            }
            if q != queries {
                return invalid!(
                    "the query id list holds {q} ids, but there are {queries} query vectors"
                );
            }
        }
        Ok(())
    }

    /// Judgements given directly as `(query row, base row)` pairs, each of grade 1.
    pub fn from_pairs(pairs: impl IntoIterator<Item = (usize, u32)>) -> Qrels {
        let mut per_query: HashMap<usize, Vec<(u32, f32)>> = HashMap::new();
        for (q, d) in pairs {
            per_query.entry(q).or_default().push((d, 1.0));
        }
        Qrels {
            per_query,
            id_rows: None,
        }
    }

    /// Every judged `(query row, base row)` pair with a positive grade, sorted.
    pub fn positive_pairs(&self) -> Vec<(u32, u32)> {
        let mut v: Vec<(u32, u32)> = self
            .per_query
            .iter()
            .flat_map(|(&q, ds)| {
                ds.iter()
                    .filter(|d| d.1 > 0.0)
                    .map(move |&(d, _)| (q as u32, d))
            })
            .collect();
        v.sort_unstable();
        v
    }

    /// Number of judged queries.
    pub fn len(&self) -> usize {
        self.per_query.len()
    }
    /// `true` if no query is judged.
    pub fn is_empty(&self) -> bool {
        self.per_query.is_empty()
    }

    /// Mean nDCG@`k` over judged queries (linear gain, as trec_eval and BEIR).
    pub fn ndcg_at(&self, results: &[Vec<Hit>], k: usize) -> f64 {
        self.mean(results, |hits, rel| {
            let grade = |id: u32| {
                rel.iter()
                    .find(|(d, _)| *d == id)
                    .map_or(0.0, |(_, g)| *g as f64)
            };
            let dcg: f64 = hits
                .iter()
                .take(k)
                .enumerate()
                .map(|(i, h)| grade(h.id) / (i as f64 + 2.0).log2())
                .sum();
            let mut ideal: Vec<f64> = rel.iter().map(|(_, g)| *g as f64).collect();
            ideal.sort_by(|a, b| b.total_cmp(a));
            let idcg: f64 = ideal
                .iter()
                .take(k)
                .enumerate()
                .map(|(i, g)| g / (i as f64 + 2.0).log2())
                .sum();
            if idcg > 0.0 {
                dcg / idcg
            } else {
                0.0
            }
        })
    }

    /// Mean recall@`k` of the relevant documents over judged queries.
    pub fn recall_at(&self, results: &[Vec<Hit>], k: usize) -> f64 {
        self.mean(results, |hits, rel| {
            let relevant: Vec<u32> = rel
                .iter()
                .filter(|(_, g)| *g > 0.0)
                .map(|(d, _)| *d)
                .collect();
            if relevant.is_empty() {
                return 0.0;
            }
            hits.iter()
                .take(k)
                .filter(|h| relevant.contains(&h.id))
                .count() as f64
                / relevant.len() as f64
        })
    }

    fn mean(&self, results: &[Vec<Hit>], f: impl Fn(&[Hit], &[(u32, f32)]) -> f64) -> f64 {
        let mut sum = 0.0;
        let mut n = 0;
        for (q, rel) in &self.per_query {
            if let Some(hits) = results.get(*q) {
                sum += f(hits, rel);
                n += 1;
            }
        }
        if n == 0 {
            0.0
        } else {
            sum / n as f64
        }
    }
}

/// Labels for label precision@k.
#[derive(Clone, Copy, Debug)]
pub struct Labels<'a> {
    /// One per base vector.
    pub base: &'a [i64],
    /// One per query.
    pub queries: &'a [i64],
}

/// One evaluation's inputs, prepared for one metric.
#[derive(Clone, Copy)]
pub struct EvalInput<'a> {
    /// The vectors searched.
    pub base: &'a Prepared<'a>,
    /// Held-out queries.
    pub queries: &'a Prepared<'a>,
    /// What encoders are fitted on (default: the base). Never the queries.
    pub train: Option<&'a Prepared<'a>>,
    /// Neighbours per query.
    pub k: usize,
    /// Seed for fitting.
    pub seed: u64,
    /// Label precision@k, if given.
    pub labels: Option<Labels<'a>>,
    /// nDCG@10 and recall@100, if given.
    pub qrels: Option<&'a Qrels>,
    /// Query `i` is base row `i` (the same file): its own row is skipped in label precision.
    pub queries_are_base: bool,
    /// Exact ground truth (at least `k` per query), if already computed.
    pub truth: Option<&'a [Vec<Hit>]>,
}

/// One evaluation's results: the JSON `rewa eval --json` prints.
#[derive(serde::Serialize, Clone, Debug)]
pub struct Report {
    /// What was measured (the encoder spec or the pipeline).
    pub spec: String,
    /// The metric.
    pub metric: String,
    /// Input dimension.
    pub dim: usize,
    /// Base size.
    pub n_base: usize,
    /// Queries.
    pub n_queries: usize,
    /// Vectors the encoders were fitted on.
    pub n_train: usize,
    /// Neighbours per query.
    pub k: usize,
    /// Bytes per vector held in memory and scanned (code sets; float vectors only when the
    /// first stage is exact).
    pub bytes_per_vector: usize,
    /// Bytes per vector stored in all, float vectors for an exact rerank included.
    pub stored_bytes_per_vector: usize,
    /// float32 bytes / stored_bytes_per_vector: what the index costs against the raw
    /// vectors, float vectors kept for an exact stage included (so below 1 for a pipeline
    /// ending in `exact`).
    pub compression: f64,
    /// recall@k against exact search.
    pub recall_at_k: f64,
    /// Queries per second of the searched pipeline.
    pub qps: f64,
    /// Seconds to fit the encoders.
    pub fit_seconds: f64,
    /// Seconds to encode the base.
    pub encode_seconds: f64,
    /// Share of the top k with the query's label.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label_precision_at_k: Option<f64>,
    /// nDCG@10 from qrels.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ndcg_at_10: Option<f64>,
    /// Recall@100 of the relevant documents from qrels.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recall_at_100: Option<f64>,
    /// When a measure above needs more hits than the pipeline's earlier stages keep: the
    /// deepened pipeline (every keep raised to the depth) it was taken from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deep_pipeline: Option<String>,
    /// Hits each stage passed on, per query (mean): the candidates every rerank saw.
    pub stage_hits: Vec<f64>,
}

/// recall@`k` on the training vectors themselves, the seed's measure: `pipeline` fitted on
/// `train` and searched with its first `n_queries` rows as queries, each query's own row left
/// out of both its hits and its exact neighbours. Set it beside held-out recall: the gap is
/// what the fit memorised.
pub fn train_recall(
    pipeline: &Pipeline,
    train: &Prepared<'_>,
    n_queries: usize,
    k: usize,
    seed: u64,
) -> Result<f64> {
    let n = n_queries.min(train.len());
    if n == 0 || k == 0 || train.len() <= k {
        return invalid!(
            "train recall needs k >= 1 and more than k = {k} training vectors and a query"
        );
    }
    let deep: Vec<usize> = pipeline
        .stages()
        .iter()
        .map(|s| s.keep.max(k + 1))
        .collect();
    let deep = pipeline.with_keeps(&deep)?;
    let spec = IndexSpec {
        metric: train.metric(),
        pipeline: deep.clone(),
        seed,
    };
    let mut index = Index::fit_prepared(&spec, train)?;
    index.add_prepared(train, &mut |_, _| {})?;
    let queries = train.metric().prepare(train.view().slice(0, n))?;
    let hits = index.search_prepared(
        &queries,
        &crate::SearchParams {
            k: k + 1,
            pipeline: Some(deep),
            filter: None,
        },
    )?;
    let truth = exact_search(train.view(), queries.view(), train.metric(), k + 1);
    Ok(recall_at_k(&drop_self(hits, k), &drop_self(truth, k), k))
}

/// Drops each query's own id (query `i` is base row `i`) and keeps `k`: hits of the base's
/// own rows used as queries.
pub fn drop_self(hits: Vec<Vec<Hit>>, k: usize) -> Vec<Vec<Hit>> {
    hits.into_iter()
        .enumerate()
        .map(|(i, h)| {
            h.into_iter()
                .filter(|h| h.id as usize != i)
                .take(k)
                .collect()
        })
        .collect()
}

/// Exact top-`k` of every query.
pub fn ground_truth(base: &Prepared<'_>, queries: &Prepared<'_>, k: usize) -> Vec<Vec<Hit>> {
    exact_search(base.view(), queries.view(), base.metric(), k)
}

/// Fits `pipeline`'s encoders on the training vectors, encodes the base, searches the queries
/// and scores the hits. recall@k and QPS come from the pipeline exactly as given. Other
/// measures are searched as deep as they need (label precision with the query's own row
/// skipped k + 1 hits, nDCG@10 ten, recall@100 a hundred): from the given pipeline if it
/// returns that many, else with its last keep raised up to the keep before it (which leaves
/// the top of its list unchanged), else from a pipeline with every keep raised, named in
/// `deep_pipeline`.
pub fn evaluate(pipeline: &Pipeline, label: &str, inp: &EvalInput<'_>) -> Result<Report> {
    let k = inp.k;
    pipeline.check(k)?;
    let metric = inp.base.metric();
    let (base, queries) = (inp.base, inp.queries);
    if queries.dim() != base.dim() {
        return Err(Error::DimMismatch {
            expected: base.dim(),
            got: queries.dim(),
        });
    }
    let train = inp.train.unwrap_or(base);
    if let Some(l) = inp.labels {
        if l.base.len() != base.len() || l.queries.len() != queries.len() {
            return invalid!(
                "{} base labels for {} vectors and {} query labels for {} queries: one label per row",
                l.base.len(),
                base.len(),
                l.queries.len(),
                queries.len()
            );
        }
    }
    if let Some(q) = inp.qrels {
        q.check_rows(base.len(), queries.len())?;
    }
    if inp.queries_are_base && queries.len() != base.len() {
        return invalid!("queries_are_base needs as many queries as base rows");
    }
    let mut depth = k;
    if inp.qrels.is_some() {
        depth = depth.max(100);
    }
    if inp.labels.is_some() && inp.queries_are_base {
        depth = depth.max(k + 1);
    }
    let depth = depth.min(base.len()).max(k);
    let stages = pipeline.stages();
    let keeps: Vec<usize> = stages.iter().map(|s| s.keep).collect();
    let last = keeps.len() - 1;
    let prev = last.checked_sub(1).map(|i| keeps[i]);
    // Raising the last keep up to the keep before it leaves the top of the list unchanged;
    // past that, every keep is raised (another pipeline, reported as `deep_pipeline`).
    let mut raised_keeps = keeps.clone();
    raised_keeps[last] = keeps[last].max(depth.min(prev.unwrap_or(usize::MAX)));
    let raised = pipeline.with_keeps(&raised_keeps)?;
    let deep = pipeline.with_keeps(&keeps.iter().map(|&x| x.max(depth)).collect::<Vec<_>>())?;
    let spec = IndexSpec {
        metric,
        pipeline: pipeline.clone(),
        seed: inp.seed,
    };
    let t = Instant::now();
    let mut index = Index::fit_prepared(&spec, train)?;
    let fit_seconds = t.elapsed().as_secs_f64();
    let t = Instant::now();
    index.add_prepared(base, &mut |_, _| {})?;
    let encode_seconds = t.elapsed().as_secs_f64();
    let owned_truth;
    let gt = match inp.truth {
        Some(g) if g.len() == queries.len() && g.iter().all(|t| t.len() >= k.min(base.len())) => g,
        Some(_) => return invalid!("the given ground truth does not hold {k} hits per query"),
        None => {
            owned_truth = ground_truth(base, queries, k);
            &owned_truth
        }
    };
    let search = |p: &Pipeline| {
        index.search_prepared(
            queries,
            &crate::SearchParams {
                k: p.final_keep(),
                pipeline: Some(p.clone()),
                filter: None,
            },
        )
    };
    // recall@k and QPS: the pipeline exactly as given.
    let t = Instant::now();
    let (results, counts) = index.search_counted(
        queries,
        &crate::SearchParams {
            k: pipeline.final_keep(),
            pipeline: Some(pipeline.clone()),
            filter: None,
        },
    )?;
    let qps = queries.len() as f64 / t.elapsed().as_secs_f64().max(1e-9);
    let stage_hits = counts
        .iter()
        .map(|&c| c as f64 / queries.len().max(1) as f64)
        .collect();
    // Every other measure from the first of given / raised / deep that returns enough hits.
    let need = |n: usize| {
        let n = n.min(base.len());
        if pipeline.final_keep() >= n {
            0
        } else if raised.final_keep() >= n {
            1
        } else {
            2
        }
    };
    let lp_need = inp
        .labels
        .map(|_| need(if inp.queries_are_base { k + 1 } else { k }));
    let (ndcg_need, r100_need) = match inp.qrels {
        Some(_) => (Some(need(10)), Some(need(100))),
        None => (None, None),
    };
    let levels = [lp_need, ndcg_need, r100_need];
    let raised_hits = match levels.contains(&Some(1)) {
        true => Some(search(&raised)?),
        false => None,
    };
    let deep_hits = match levels.contains(&Some(2)) {
        true => Some(search(&deep)?),
        false => None,
    };
    let deep_pipeline = deep_hits.as_ref().map(|_| deep.to_string());
    let hits = |level: usize| match level {
        0 => &results,
        1 => raised_hits.as_ref().expect("invariant: searched above"),
        _ => deep_hits.as_ref().expect("invariant: searched above"),
    };
    let own: Vec<u32> = (0..queries.len() as u32).collect();
    let lp = inp.labels.zip(lp_need).map(|(l, level)| {
        label_precision_at_k(
            hits(level),
            l.queries,
            l.base,
            k,
            inp.queries_are_base.then_some(&own[..]),
        )
    });
    let dim = base.dim();
    let codes: usize = index
        .encoders()
        .iter()
        .map(crate::index::encoder_bytes)
        .sum();
    let first_exact = stages[0].scorer == Scorer::Exact;
    let bytes = codes + if first_exact { 4 * dim } else { 0 };
    Ok(Report {
        spec: label.to_string(),
        metric: metric.to_string(),
        dim,
        n_base: base.len(),
        n_queries: queries.len(),
        n_train: train.len(),
        k,
        bytes_per_vector: bytes,
        stored_bytes_per_vector: index.bytes_per_vector(),
        compression: (4 * dim) as f64 / index.bytes_per_vector().max(1) as f64,
        recall_at_k: recall_at_k(&results, gt, k),
        qps,
        fit_seconds,
        encode_seconds,
        label_precision_at_k: lp,
        ndcg_at_10: inp
            .qrels
            .zip(ndcg_need)
            .map(|(q, l)| q.ndcg_at(hits(l), 10)),
        recall_at_100: inp
            .qrels
            .zip(r100_need)
            .map(|(q, l)| q.recall_at(hits(l), 100)),
        deep_pipeline,
        stage_hits,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hits(ids: &[u32]) -> Vec<Hit> {
        ids.iter().map(|&id| Hit { id, distance: 0.0 }).collect()
    }

    #[test]
    fn recall_and_precision() {
        let r = vec![hits(&[1, 2, 3, 4])];
        let t = vec![hits(&[1, 3, 5, 7])];
        assert_eq!(recall_at_k(&r, &t, 4), 0.5);
        let base_labels = [0, 1, 1, 0, 1];
        assert_eq!(label_precision_at_k(&r, &[1], &base_labels, 2, None), 1.0);
        assert_eq!(
            label_precision_at_k(&r, &[1], &base_labels, 2, Some(&[2])),
            0.5
        );
    }

    #[test]
    fn ndcg_matches_hand_computation() {
        let mut q = Qrels::default();
        q.per_query.insert(0, vec![(7, 1.0), (9, 1.0)]);
        // Relevant at ranks 1 and 3: DCG = 1 + 1/log2(4) = 1.5; IDCG = 1 + 1/log2(3).
        let r = vec![hits(&[7, 1, 9])];
        let want = 1.5 / (1.0 + 1.0 / 3f64.log2());
        assert!((q.ndcg_at(&r, 10) - want).abs() < 1e-12);
        assert_eq!(q.recall_at(&r, 2), 0.5);
    }
}
