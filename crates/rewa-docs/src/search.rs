//! Dense, BM25 and hybrid search over an index and its documents, with a filter: the one flow
//! the CLI, the server and Python call.

use crate::{Docs, Error, Filter, Kind, Result};
use rewa::{Hit, Index, Pipeline, Prepared, RowFilter, SearchParams};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// Reciprocal rank fusion's usual constant `k`: 60, as in Cormack, Clarke & Büttcher (SIGIR
/// 2009), Elasticsearch and OpenSearch (`rrf` alone means it).
pub const RRF_K: f32 = 60.0;

/// How a hybrid search fuses its dense and BM25 lists.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Fusion {
    /// `alpha * dense + (1 - alpha) * bm25`, each list's scores min-max normalised per query
    /// (a row missing from a list adds 0). The default, `weighted:0.5`: on SciFact it gave
    /// the best nDCG@10 of every fusion tried, with MiniLM and with MPNet (0.708, 0.716;
    /// reciprocal rank fusion 0.679, 0.686 at k = 60 and 0.705, 0.709 at k = 1).
    Weighted(f32),
    /// Reciprocal rank fusion: `sum 1 / (k + rank)`, ranks from 1.
    Rrf(f32),
}

impl Default for Fusion {
    fn default() -> Self {
        Fusion::Weighted(0.5)
    }
}

impl std::str::FromStr for Fusion {
    type Err = Error;
    /// `weighted`, `weighted:ALPHA` (0 to 1: the dense side's weight), `rrf` or `rrf:K`.
    fn from_str(s: &str) -> Result<Fusion> {
        let bad = || {
            Error::Invalid(format!(
                "bad fusion {s:?}: weighted, weighted:ALPHA (0 to 1, the dense side's weight), rrf or rrf:K (K > 0)"
            ))
        };
        let (name, v) = match s.split_once(':') {
            Some((n, v)) => (n, Some(v.parse::<f32>().map_err(|_| bad())?)),
            None => (s, None),
        };
        match (name, v) {
            ("weighted", None) => Ok(Fusion::Weighted(0.5)),
            ("weighted", Some(a)) if (0.0..=1.0).contains(&a) => Ok(Fusion::Weighted(a)),
            ("rrf", None) => Ok(Fusion::Rrf(RRF_K)),
            ("rrf", Some(k)) if k > 0.0 && k.is_finite() => Ok(Fusion::Rrf(k)),
            _ => Err(bad()),
        }
    }
}

impl std::fmt::Display for Fusion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fusion::Weighted(a) => write!(f, "weighted:{a}"),
            Fusion::Rrf(k) => write!(f, "rrf:{k}"),
        }
    }
}

/// Rows fetched from each side before a hybrid search fuses them (at least `k`).
pub const HYBRID_DEPTH: usize = 100;

/// How a query is matched.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// Nearest vectors (the index's pipeline).
    #[default]
    Dense,
    /// BM25 over the stored text.
    Bm25,
    /// Both, fused by reciprocal rank ([`rrf`]).
    Hybrid,
}

impl std::str::FromStr for Mode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Mode> {
        match s {
            "dense" => Ok(Mode::Dense),
            "bm25" => Ok(Mode::Bm25),
            "hybrid" => Ok(Mode::Hybrid),
            _ => Err(Error::Invalid(format!(
                "unknown mode {s:?} (dense, bm25 or hybrid)"
            ))),
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Dense => "dense",
            Mode::Bm25 => "bm25",
            Mode::Hybrid => "hybrid",
        })
    }
}

/// A batch of queries.
#[derive(Clone, Debug)]
pub struct Query<'a> {
    /// Hits per query.
    pub k: usize,
    /// How to match.
    pub mode: Mode,
    /// The dense pipeline (`None`: the index's).
    pub pipeline: Option<Pipeline>,
    /// Only rows this filter allows.
    pub filter: Option<&'a Filter>,
    /// The queries' vectors (dense and hybrid), prepared for the index's metric.
    pub vectors: Option<&'a Prepared<'a>>,
    /// The queries' texts (BM25 and hybrid), one per query.
    pub texts: Option<&'a [String]>,
    /// How hybrid fuses the two lists.
    pub fusion: Fusion,
}

impl Default for Query<'_> {
    fn default() -> Self {
        Query {
            k: 10,
            mode: Mode::Dense,
            pipeline: None,
            filter: None,
            vectors: None,
            texts: None,
            fusion: Fusion::default(),
        }
    }
}

/// Runs `q` over `index` and its documents. Dense hits carry the pipeline's distances; BM25
/// hits `-score`; hybrid hits `-(fused score)`. Every mode but dense without a filter needs
/// the documents.
pub fn search(index: &Index, docs: Option<&Docs>, q: &Query<'_>) -> Result<Vec<Vec<Hit>>> {
    search_stores(index, docs.as_slice(), q)
}

/// The fields of several stores together.
pub fn fields_of(stores: &[&Docs]) -> BTreeMap<String, BTreeSet<Kind>> {
    let mut all: BTreeMap<String, BTreeSet<Kind>> = BTreeMap::new();
    for d in stores {
        for (k, v) in d.fields() {
            all.entry(k.clone()).or_default().extend(v);
        }
    }
    all
}

/// The rows `filter` allows in any of `stores` (checked against all their fields).
pub fn filter_stores(stores: &[&Docs], filter: &Filter) -> Result<RowFilter> {
    let fields = fields_of(stores);
    filter.check(&fields)?;
    let mut bits: Vec<u64> = Vec::new();
    for d in stores {
        let r = d.matching(filter, &fields)?;
        let w = r.words();
        if w.len() > bits.len() {
            bits.resize(w.len(), 0);
        }
        for (b, x) in bits.iter_mut().zip(w) {
            *b |= x;
        }
    }
    Ok(RowFilter::from_bits(bits))
}

/// [`search`] over documents held in several stores (rows in one store or another: an index
/// saved in a directory and the records added since, held in memory).
pub fn search_stores(index: &Index, stores: &[&Docs], q: &Query<'_>) -> Result<Vec<Vec<Hit>>> {
    let need_docs = |what: &str| -> Result<()> {
        if stores.is_empty() {
            return Err(Error::Invalid(format!(
                "{what} needs stored documents, and this index has none (build it with --text, or --fields for vectors)"
            )));
        }
        Ok(())
    };
    let allowed: Option<Arc<RowFilter>> = match q.filter {
        Some(f) if !f.is_empty() => {
            need_docs("a filter")?;
            Some(Arc::new(filter_stores(stores, f)?))
        }
        Some(f) => {
            // an empty filter allows every row, but is still checked
            f.check(&fields_of(stores))?;
            None
        }
        None => None,
    };
    let nq = match (q.mode, q.vectors, q.texts) {
        (Mode::Dense, Some(v), _) => v.len(),
        (Mode::Bm25, _, Some(t)) => t.len(),
        (Mode::Hybrid, Some(v), Some(t)) if v.len() == t.len() => t.len(),
        (Mode::Hybrid, Some(v), Some(t)) => {
            return Err(Error::Invalid(format!(
                "hybrid search: {} query vectors but {} query texts",
                v.len(),
                t.len()
            )))
        }
        (m, _, _) => {
            return Err(Error::Invalid(format!(
                "{m} search needs {}",
                match m {
                    Mode::Dense => "query vectors (or texts to embed)",
                    Mode::Bm25 => "query texts",
                    Mode::Hybrid => "query texts (and the model the index was built with)",
                }
            )))
        }
    };
    if q.k == 0 {
        return Err(Error::Invalid("k must be at least 1".into()));
    }
    let dense = |k: usize, pipeline: Option<Pipeline>| -> Result<Vec<Vec<Hit>>> {
        let v = q.vectors.expect("checked above");
        Ok(index.search_prepared(
            v,
            &SearchParams {
                k,
                pipeline,
                filter: allowed.clone(),
            },
        )?)
    };
    let live = |r: u32| index.is_live(r);
    let bm25 = |k: usize| -> Result<Vec<Vec<Hit>>> {
        need_docs("BM25")?;
        q.texts
            .expect("checked above")
            .iter()
            .map(|t| {
                let mut all = Vec::new();
                for d in stores {
                    all.extend(d.bm25(t, k, allowed.as_deref(), &live)?);
                }
                all.sort_unstable();
                all.truncate(k);
                Ok(all)
            })
            .collect()
    };
    match q.mode {
        Mode::Dense => dense(q.k, q.pipeline.clone()),
        Mode::Bm25 => bm25(q.k),
        Mode::Hybrid => {
            let depth = q.k.max(HYBRID_DEPTH);
            let p = deeper(q.pipeline.as_ref().unwrap_or(index.pipeline()), depth)?;
            let depth = depth.min(p.final_keep());
            let (a, b) = (dense(depth, Some(p))?, bm25(depth)?);
            // dense distances as scores (higher is better), as BM25's hits carry them
            Ok((0..nq)
                .map(|i| match q.fusion {
                    Fusion::Rrf(c) => rrf(&[&a[i], &b[i]], c, q.k),
                    Fusion::Weighted(w) => weighted(&[(&a[i], w), (&b[i], 1.0 - w)], q.k),
                })
                .collect())
        }
    }
}

/// `p` with its last stage keeping `depth` (at most what the stage before keeps).
fn deeper(p: &Pipeline, depth: usize) -> Result<Pipeline> {
    let mut stages = p.stages().to_vec();
    let n = stages.len();
    if n == 0 {
        return Ok(p.clone());
    }
    let cap = if n >= 2 {
        stages[n - 2].keep
    } else {
        usize::MAX
    };
    let last = &mut stages[n - 1];
    if last.bound.is_none() {
        last.keep = last.keep.max(depth.min(cap));
    }
    Ok(Pipeline::new(stages)?)
}

/// A weighted sum of each list's scores (`-distance`), min-max normalised per list (all equal:
/// 1); the best `k` by fused score, ties by row; hits carry `-score`.
pub fn weighted(lists: &[(&[Hit], f32)], k: usize) -> Vec<Hit> {
    let mut score: std::collections::HashMap<u32, f64> = std::collections::HashMap::new();
    for (l, w) in lists {
        let (hi, lo) = l.iter().fold((f32::MIN, f32::MAX), |(hi, lo), h| {
            (hi.max(-h.distance), lo.min(-h.distance))
        });
        for h in l.iter() {
            let x = if hi > lo {
                (-h.distance - lo) / (hi - lo)
            } else {
                1.0
            };
            *score.entry(h.id).or_default() += (*w as f64) * x as f64;
        }
    }
    best(score, k)
}

/// Reciprocal rank fusion of ranked lists: each row scores `sum 1 / (c + rank)` over the lists
/// that hold it (ranks from 1); the best `k` by score, ties by row; hits carry `-score`.
pub fn rrf(lists: &[&[Hit]], c: f32, k: usize) -> Vec<Hit> {
    let mut score: std::collections::HashMap<u32, f64> = std::collections::HashMap::new();
    for l in lists {
        for (r, h) in l.iter().enumerate() {
            *score.entry(h.id).or_default() += 1.0 / (c as f64 + r as f64 + 1.0);
        }
    }
    best(score, k)
}

/// The best `k` rows of fused scores, ties by row; hits carry `-score`.
fn best(score: std::collections::HashMap<u32, f64>, k: usize) -> Vec<Hit> {
    let mut out: Vec<Hit> = score
        .into_iter()
        .map(|(id, s)| Hit {
            id,
            distance: -(s as f32),
        })
        .collect();
    out.sort_unstable();
    out.truncate(k);
    out
}
