use crate::data::{labels, load, load_train, log, same_dim};
use anyhow::{bail, Context, Result};
use rewa::eval::{label_precision_at_k, recall_at_k, Qrels};
use rewa::search::{exact_search, Scorer};
use rewa::{EncoderSpec, Index, IndexSpec, Metric, Pipeline, SearchParams, Vectors};
use serde::Serialize;
use std::path::PathBuf;
use std::time::Instant;

/// Measure an encoder or a staged pipeline against exact search.
///
/// Encoders are fitted on --train if given, else on --base; never on the queries. Ground truth
/// is exact search of the queries over the base with the same metric. Progress goes to stderr;
/// with --json, stdout holds exactly one JSON object.
#[derive(clap::Args)]
pub struct Args {
    /// Base vectors (.npy, .fvecs, .bvecs).
    #[arg(long)]
    base: PathBuf,
    /// Held-out query vectors.
    #[arg(long)]
    queries: PathBuf,
    /// Vectors to fit encoders on (default: --base).
    #[arg(long)]
    train: Option<PathBuf>,
    /// One encoder, scanned over everything (e.g. hadamard256+sign).
    #[arg(
        long,
        conflicts_with = "pipeline",
        required_unless_present = "pipeline"
    )]
    encoder: Option<EncoderSpec>,
    /// A staged pipeline (e.g. hadamard512+sign:1000,int8:100,exact:10).
    #[arg(long)]
    pipeline: Option<Pipeline>,
    /// Number of neighbours.
    #[arg(long, default_value_t = 10)]
    k: usize,
    /// cosine (normalises inputs once), ip or l2.
    #[arg(long, default_value = "cosine")]
    metric: Metric,
    /// Labels of the base vectors (.npy integers or text, one per line).
    #[arg(long, requires = "query_labels")]
    labels: Option<PathBuf>,
    /// Labels of the queries.
    #[arg(long, requires = "labels")]
    query_labels: Option<PathBuf>,
    /// BEIR qrels TSV (query-id, corpus-id, score) for nDCG@10 and recall@100.
    #[arg(long, requires_all = ["doc_ids", "query_ids"])]
    qrels: Option<PathBuf>,
    /// Ids of the base rows, one per line.
    #[arg(long)]
    doc_ids: Option<PathBuf>,
    /// Ids of the query rows, one per line.
    #[arg(long)]
    query_ids: Option<PathBuf>,
    /// Seed for encoder fitting.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Print one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

/// One evaluation's inputs, already loaded.
pub struct Input<'a> {
    pub base: &'a Vectors,
    pub queries: &'a Vectors,
    pub train: Option<&'a Vectors>,
    pub metric: Metric,
    pub k: usize,
    pub seed: u64,
    /// Label sets: (base labels, query labels, exclude query i's own id when queries are the base).
    pub labels: Option<(&'a [i64], &'a [i64], bool)>,
    pub qrels: Option<&'a Qrels>,
    /// Exact ground truth, if already computed (top >= k).
    pub truth: Option<&'a [Vec<rewa::Hit>]>,
}

/// One evaluation's results; the JSON printed by `rewa eval --json`.
#[derive(Serialize, Clone, Debug)]
pub struct Report {
    pub spec: String,
    pub metric: String,
    pub dim: usize,
    pub n_base: usize,
    pub n_queries: usize,
    pub n_train: usize,
    pub k: usize,
    /// Bytes per vector held in memory and scanned (code sets; float vectors only when the
    /// first stage is exact).
    pub bytes_per_vector: usize,
    /// Bytes per vector stored in all, float vectors for an exact rerank included.
    pub stored_bytes_per_vector: usize,
    /// float32 bytes / bytes_per_vector.
    pub compression: f64,
    pub recall_at_k: f64,
    pub qps: f64,
    pub fit_seconds: f64,
    pub encode_seconds: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label_precision_at_k: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ndcg_at_10: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recall_at_100: Option<f64>,
}

/// Ground truth: exact top-`k` under `metric` (inputs already normalised for cosine).
pub fn truth(base: &Vectors, queries: &Vectors, metric: Metric, k: usize) -> Vec<Vec<rewa::Hit>> {
    let t = Instant::now();
    let gt = exact_search(base.view(), queries.view(), metric, k);
    log(&format!(
        "exact ground truth for {} queries in {:.2}s",
        queries.len(),
        t.elapsed().as_secs_f64()
    ));
    gt
}

/// Fits, encodes, searches and scores one pipeline.
pub fn evaluate(pipeline: &Pipeline, label: &str, inp: &Input) -> Result<Report> {
    let k = inp.k;
    pipeline.check(k)?;
    let mut want = k;
    if inp.qrels.is_some() {
        want = want.max(100);
    }
    if matches!(inp.labels, Some((_, _, true))) {
        want = want.max(k + 1);
    }
    let k_search = want.min(pipeline.final_keep()).max(k);
    // A one-stage run returns as many hits as measures need.
    let pipeline = if pipeline.stages.len() == 1 {
        pipeline.with_keeps(&[k_search])?
    } else {
        pipeline.clone()
    };
    let train = inp.train.unwrap_or(inp.base);
    let spec = IndexSpec {
        metric: inp.metric,
        pipeline: pipeline.clone(),
        seed: inp.seed,
    };
    let t = Instant::now();
    let mut index = Index::fit(&spec, train.view()).with_context(|| format!("fitting {label}"))?;
    let fit_seconds = t.elapsed().as_secs_f64();
    let t = Instant::now();
    index.add(inp.base.view())?;
    let encode_seconds = t.elapsed().as_secs_f64();
    let owned_truth;
    let gt = match inp.truth {
        Some(g) => g,
        None => {
            owned_truth = truth(inp.base, inp.queries, inp.metric, want);
            &owned_truth
        }
    };
    let params = SearchParams {
        k: k_search,
        pipeline: None,
    };
    let t = Instant::now();
    let results = index.search_batch(inp.queries.view(), &params)?;
    let secs = t.elapsed().as_secs_f64();
    let qps = inp.queries.len() as f64 / secs.max(1e-9);

    let (recall, lp) = match inp.labels {
        Some((bl, ql, exclude)) => {
            let own: Vec<u32> = (0..inp.queries.len() as u32).collect();
            let lp = label_precision_at_k(&results, ql, bl, k, exclude.then_some(&own[..]));
            (recall_at_k(&results, gt, k), Some(lp))
        }
        None => (recall_at_k(&results, gt, k), None),
    };
    let dim = inp.base.dim();
    let codes: usize = index
        .code_sets()
        .iter()
        .map(|c| c.encoder().code_len())
        .sum();
    let first_exact = pipeline.stages[0].scorer == Scorer::Exact;
    let bytes = codes + if first_exact { 4 * dim } else { 0 };
    Ok(Report {
        spec: label.to_string(),
        metric: inp.metric.to_string(),
        dim,
        n_base: inp.base.len(),
        n_queries: inp.queries.len(),
        n_train: train.len(),
        k,
        bytes_per_vector: bytes,
        stored_bytes_per_vector: index.bytes_per_vector(),
        compression: (4 * dim) as f64 / bytes as f64,
        recall_at_k: recall,
        qps,
        fit_seconds,
        encode_seconds,
        label_precision_at_k: lp,
        ndcg_at_10: inp.qrels.map(|q| q.ndcg_at(&results, 10)),
        recall_at_100: inp.qrels.map(|q| q.recall_at(&results, 100)),
    })
}

pub fn run(a: Args) -> Result<()> {
    if a.k == 0 {
        bail!(rewa::Error::InvalidInput("--k must be at least 1".into()));
    }
    let base = load(&a.base, a.metric)?;
    let queries = load(&a.queries, a.metric)?;
    same_dim(&queries, &a.queries, base.dim(), &a.base)?;
    let train = load_train(a.train.as_deref(), a.metric, &base, &a.base)?;
    let (pipeline, label) = match (&a.encoder, &a.pipeline) {
        (Some(e), _) => {
            e.check(base.dim())?;
            (Pipeline::single(e.clone(), a.k), e.to_string())
        }
        (None, Some(p)) => (p.clone(), p.to_string()),
        (None, None) => bail!("give --encoder or --pipeline"),
    };
    let same_file = std::fs::canonicalize(&a.base).ok() == std::fs::canonicalize(&a.queries).ok();
    let label_sets = match (&a.labels, &a.query_labels) {
        (Some(bl), Some(ql)) => Some((
            labels(bl, base.len(), &a.base)?,
            labels(ql, queries.len(), &a.queries)?,
        )),
        _ => None,
    };
    let qrels = match (&a.qrels, &a.doc_ids, &a.query_ids) {
        (Some(q), Some(d), Some(qi)) => {
            Some(Qrels::load(q, d, qi).with_context(|| format!("reading qrels {}", q.display()))?)
        }
        _ => None,
    };
    let inp = Input {
        base: &base,
        queries: &queries,
        train: train.as_ref(),
        metric: a.metric,
        k: a.k,
        seed: a.seed,
        labels: label_sets
            .as_ref()
            .map(|(b, q)| (&b[..], &q[..], same_file)),
        qrels: qrels.as_ref(),
        truth: None,
    };
    let r = evaluate(&pipeline, &label, &inp)?;
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!("{}", crate::cmd::bench::table(&[r]));
    }
    Ok(())
}
