//! Quality measures: recall@k against exact search, label precision@k, and BEIR-style
//! nDCG@10 / recall@100 from qrels. Used by tests, the CLI and benches alike.

use crate::error::{Error, Result};
use crate::search::Hit;
use std::collections::HashMap;
use std::path::Path;

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
}

fn read_ids(path: &Path) -> Result<HashMap<String, usize>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    Ok(text
        .lines()
        .map(str::trim)
        .enumerate()
        .map(|(i, s)| (s.to_string(), i))
        .collect())
}

impl Qrels {
    /// Loads a BEIR qrels TSV (`query-id  corpus-id  score`, header optional) and maps its ids
    /// to rows with the id lists (one id per line, row order). Pairs whose ids are not in the
    /// lists are skipped; a file with no usable pair is an error.
    pub fn load(tsv: &Path, doc_ids: &Path, query_ids: &Path) -> Result<Qrels> {
        let docs = read_ids(doc_ids)?;
        let queries = read_ids(query_ids)?;
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
        Ok(Qrels { per_query })
    }

    /// Judgements given directly as `(query row, base row)` pairs, each of grade 1.
    pub fn from_pairs(pairs: impl IntoIterator<Item = (usize, u32)>) -> Qrels {
        let mut per_query: HashMap<usize, Vec<(u32, f32)>> = HashMap::new();
        for (q, d) in pairs {
            per_query.entry(q).or_default().push((d, 1.0));
        }
        Qrels { per_query }
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
