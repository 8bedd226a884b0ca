use crate::data::{check_dim, labels, load_prepared, load_train_prepared};
use anyhow::{bail, Context, Result};
use rewa::eval::{evaluate, EvalInput, Labels, Qrels};
use rewa::{EncoderSpec, Metric, Pipeline};
use std::path::PathBuf;

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
    /// BEIR qrels TSV (query-id, corpus-id, score) for nDCG@10 and recall@100 (searched 100
    /// deep whatever --k is).
    #[arg(long, requires_all = ["doc_ids", "query_ids"])]
    qrels: Option<PathBuf>,
    /// Ids of the base rows, one per line (as many as base rows, no repeats).
    #[arg(long, requires = "qrels")]
    doc_ids: Option<PathBuf>,
    /// Ids of the query rows, one per line (as many as query rows, no repeats).
    #[arg(long, requires = "qrels")]
    query_ids: Option<PathBuf>,
    /// Seed for encoder fitting.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Print one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<()> {
    if a.k == 0 {
        bail!(rewa::Error::InvalidInput("--k must be at least 1".into()));
    }
    let base = load_prepared(&a.base, a.metric)?;
    let queries = load_prepared(&a.queries, a.metric)?;
    check_dim(&a.queries, queries.dim(), &a.base, base.dim())?;
    let train = load_train_prepared(a.train.as_deref(), a.metric, &a.base, base.dim())?;
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
            let qr =
                Qrels::load(q, d, qi).with_context(|| format!("reading qrels {}", q.display()))?;
            qr.check_rows(base.len(), queries.len()).with_context(|| {
                format!(
                    "checking {} and {} against the vectors",
                    d.display(),
                    qi.display()
                )
            })?;
            Some(qr)
        }
        _ => None,
    };
    let inp = EvalInput {
        base: &base,
        queries: &queries,
        train: train.as_ref(),
        k: a.k,
        seed: a.seed,
        labels: label_sets.as_ref().map(|(b, q)| Labels {
            base: b,
            queries: q,
        }),
        qrels: qrels.as_ref(),
        queries_are_base: same_file,
        truth: None,
    };
    let r = evaluate(&pipeline, &label, &inp).with_context(|| format!("evaluating {label}"))?;
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!("{}", crate::cmd::bench::table(&[r]));
    }
    Ok(())
}
