use crate::data::{check_dim, labels, load_prepared, load_train_prepared};
use crate::text::{check_texts, embed_file, load_model, load_model_for, TextOpts};
use anyhow::{bail, Context, Result};
use rewa::eval::{evaluate, EvalInput, Labels, Qrels};
use rewa::{EncoderSpec, Metric, Pipeline, Prepared};
use std::path::PathBuf;

/// The base and queries, prepared, with the texts' ids when they came from text.
struct Inputs {
    base: Prepared<'static>,
    queries: Prepared<'static>,
    base_path: PathBuf,
    queries_path: PathBuf,
    ids: Option<(Vec<String>, Vec<String>)>,
}

fn inputs(a: &Args) -> Result<Inputs> {
    match (&a.base, &a.queries, &a.text, &a.query_text, &a.model) {
        (Some(b), Some(q), None, None, _) => {
            let base = load_prepared(b, a.metric)?;
            let queries = load_prepared(q, a.metric)?;
            check_dim(q, queries.dim(), b, base.dim())?;
            Ok(Inputs {
                base,
                queries,
                base_path: b.clone(),
                queries_path: q.clone(),
                ids: None,
            })
        }
        (None, None, Some(t), Some(qt), Some(m)) => {
            let field = a.text_opts.field();
            // Both files are checked before the model loads.
            let doc_texts = check_texts(t, &a.text_opts)?;
            let query_texts = check_texts(qt, &a.text_opts)?;
            let mut e = load_model(m, &a.text_opts)?;
            if let Some(n) = a.max_seq_len {
                e.set_max_seq_len(n).context("--max-seq-len")?;
            }
            let docs = embed_file(&e, doc_texts, &field)?;
            let qs = embed_file(&e, query_texts, &field)?;
            Ok(Inputs {
                base: a.metric.prepare_owned(docs.vectors)?,
                queries: a.metric.prepare_owned(qs.vectors)?,
                base_path: t.clone(),
                queries_path: qt.clone(),
                ids: Some((docs.ids, qs.ids)),
            })
        }
        _ => bail!("give --base and --queries, or --text, --query-text and --model"),
    }
}

/// Measure an encoder or a staged pipeline against exact search.
///
/// Encoders are fitted on --train if given, else on --base; never on the queries. Ground truth
/// is exact search of the queries over the base with the same metric. Progress goes to stderr;
/// with --json, stdout holds exactly one JSON object.
///
/// From text: --text corpus.jsonl --query-text queries.jsonl --model DIR embeds both first,
/// and --qrels then maps the texts' own ids (no id files needed), so the BEIR figures come
/// from the text files alone.
///
/// A built index: --index IDX --query-text queries.jsonl --qrels QRELS [--mode bm25|dense|
/// hybrid] [--filter JSON] measures the index as built (its pipeline, its documents for
/// BM25), the queries embedded with the model it records.
#[derive(clap::Args)]
pub struct Args {
    /// An index built from text (`rewa build --text`) to measure with --query-text and
    /// --qrels, instead of fitting encoders here.
    #[arg(long, conflicts_with_all = ["base", "text", "encoder", "labels"], requires_all = ["query_text", "qrels"])]
    index: Option<PathBuf>,
    /// With --index: dense, bm25 or hybrid.
    #[arg(long, default_value = "dense", requires = "index")]
    mode: rewa_docs::Mode,
    /// With --index: only rows whose stored fields pass this filter (as `rewa search`).
    #[arg(long, requires = "index", value_name = "JSON|@FILE")]
    filter: Option<String>,
    /// With --index and hybrid: weighted:ALPHA or rrf:K (as `rewa search --fusion`).
    #[arg(long, default_value = "weighted:0.5", requires = "index")]
    fusion: rewa_docs::Fusion,
    /// Base vectors (.npy, .fvecs, .bvecs).
    #[arg(long, required_unless_present_any = ["text", "index"], conflicts_with = "text")]
    base: Option<PathBuf>,
    /// Held-out query vectors. With --index: the --query-text queries' vectors, row i for
    /// text i (precomputed embeddings), instead of embedding them with the index's model.
    #[arg(long, required_unless_present = "query_text")]
    queries: Option<PathBuf>,
    /// Documents as texts instead of --base: .jsonl (BEIR corpus), .txt or .tsv; needs --model
    /// and --query-text.
    #[arg(long, requires_all = ["model", "query_text"])]
    text: Option<PathBuf>,
    /// Queries as texts instead of --queries (.jsonl BEIR queries, .txt, .tsv); with --text
    /// or --index.
    #[arg(long)]
    query_text: Option<PathBuf>,
    /// A sentence-transformers model directory to embed --text and --query-text with.
    #[arg(long, requires = "text")]
    model: Option<PathBuf>,
    /// With --text: word pieces per text (default: the model's max_seq_length).
    #[arg(long, requires = "text")]
    max_seq_len: Option<usize>,
    #[command(flatten)]
    text_opts: TextOpts,
    /// Vectors to fit encoders on (default: --base).
    #[arg(long)]
    train: Option<PathBuf>,
    /// One encoder, scanned over everything (e.g. hadamard256+sign).
    #[arg(
        long,
        conflicts_with = "pipeline",
        required_unless_present_any = ["pipeline", "index"]
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
    /// deep whatever --k is); with vectors it needs --doc-ids and --query-ids, with text the
    /// texts' ids are used.
    #[arg(long)]
    qrels: Option<PathBuf>,
    /// Ids of the base rows, one per line (as many as base rows, no repeats); with --index,
    /// for an index built from vectors (one per row id).
    #[arg(long, requires = "qrels", conflicts_with = "text")]
    doc_ids: Option<PathBuf>,
    /// Ids of the query rows, one per line (as many as query rows, no repeats).
    #[arg(long, requires = "qrels", conflicts_with = "text")]
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
    if let Some(dir) = &a.index {
        return run_index(&a, dir);
    }
    if a.query_text.is_some() && a.text.is_none() {
        bail!("--query-text goes with --text (or --index)");
    }
    if a.query_text.is_some() && a.queries.is_some() {
        bail!("give --queries (vectors) or --query-text, not both (both only with --index)");
    }
    if a.labels.is_some() && a.text.is_some() {
        bail!("--labels go with vector files, not --text");
    }
    if a.qrels.is_some() && a.text.is_none() && (a.doc_ids.is_none() || a.query_ids.is_none()) {
        bail!("--qrels with vector files needs --doc-ids and --query-ids (with --text the texts' ids are used)");
    }
    let Inputs {
        base,
        queries,
        base_path,
        queries_path,
        ids,
    } = inputs(&a)?;
    let train = load_train_prepared(a.train.as_deref(), a.metric, &base_path, base.dim())?;
    let (pipeline, label) = match (&a.encoder, &a.pipeline) {
        (Some(e), _) => {
            e.check(base.dim())?;
            (Pipeline::single(e.clone(), a.k), e.to_string())
        }
        (None, Some(p)) => (p.clone(), p.to_string()),
        (None, None) => bail!("give --encoder or --pipeline"),
    };
    let same_file =
        std::fs::canonicalize(&base_path).ok() == std::fs::canonicalize(&queries_path).ok();
    let label_sets = match (&a.labels, &a.query_labels) {
        (Some(bl), Some(ql)) => Some((
            labels(bl, base.len(), &base_path)?,
            labels(ql, queries.len(), &queries_path)?,
        )),
        _ => None,
    };
    let qrels = match (&a.qrels, &a.doc_ids, &a.query_ids, &ids) {
        (Some(q), _, _, Some((docs, qs))) => Some(
            Qrels::load_with_ids(q, docs, qs)
                .with_context(|| format!("reading qrels {}", q.display()))?,
        ),
        (Some(q), Some(d), Some(qi), None) => {
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

/// `rewa eval --index`: the index as built, its documents for BM25, queries embedded with its
/// model; nDCG@10 and recall@100 from the qrels (searched 100 deep).
fn run_index(a: &Args, dir: &std::path::Path) -> Result<()> {
    use rewa_docs::Mode;
    let qpath = a.query_text.as_ref().expect("clap requires it");
    let index =
        rewa::Index::open(dir).with_context(|| format!("opening index {}", dir.display()))?;
    let docs = rewa_docs::Docs::open(dir)
        .with_context(|| format!("opening the documents of {}", dir.display()))?;
    let from_file: Vec<String>;
    let doc_ids: &[String] = match (index.doc_ids(), &a.doc_ids) {
        (Some(d), _) => d,
        (None, Some(f)) => {
            from_file = std::fs::read_to_string(f)
                .with_context(|| format!("--doc-ids {}", f.display()))?
                .lines()
                .map(str::to_owned)
                .collect();
            if from_file.len() != index.next_id() {
                bail!(
                    "--doc-ids {} holds {} ids, but {} has {} rows",
                    f.display(),
                    from_file.len(),
                    dir.display(),
                    index.next_id()
                );
            }
            &from_file
        }
        (None, None) => bail!(
            "{} has no corpus ids (it was built from vectors): give --doc-ids, one per row (qrels name corpus ids)",
            dir.display()
        ),
    };
    let texts = rewa_embed::read_texts(qpath, &a.text_opts.field())
        .with_context(|| format!("reading texts from {}", qpath.display()))?;
    let vectors = if a.mode == Mode::Bm25 {
        None
    } else if let Some(qv) = &a.queries {
        let v = load_prepared(qv, index.metric())?;
        check_dim(qv, v.dim(), dir, index.dim())?;
        if v.len() != texts.texts.len() {
            bail!(
                "--queries {} holds {} vectors for {} query texts (row i is text i)",
                qv.display(),
                v.len(),
                texts.texts.len()
            );
        }
        Some(v)
    } else {
        let Some(m) = index.text_model() else {
            bail!("{} records no text model", dir.display());
        };
        let e = load_model_for(std::path::Path::new(&m.dir), &a.text_opts, m)?;
        let f = embed_file(&e, check_texts(qpath, &a.text_opts)?, &a.text_opts.field())?;
        Some(index.metric().prepare_owned(f.vectors)?)
    };
    let qrels_path = a.qrels.as_ref().expect("clap requires it");
    let qrels = Qrels::load_with_ids(qrels_path, doc_ids, &texts.ids)
        .with_context(|| format!("reading qrels {}", qrels_path.display()))?;
    let filter = match &a.filter {
        Some(s) => {
            let text = match s.strip_prefix('@') {
                Some(f) => std::fs::read_to_string(f).with_context(|| format!("--filter @{f}"))?,
                None => s.clone(),
            };
            Some(text.parse::<rewa_docs::Filter>().context("--filter")?)
        }
        None => None,
    };
    let depth = a.k.max(100);
    let t = std::time::Instant::now();
    let hits = rewa_docs::search(
        &index,
        docs.as_ref(),
        &rewa_docs::Query {
            k: depth,
            mode: a.mode,
            pipeline: a.pipeline.clone(),
            filter: filter.as_ref(),
            vectors: vectors.as_ref(),
            texts: Some(&texts.texts),
            fusion: a.fusion,
        },
    )?;
    let secs = t.elapsed().as_secs_f64();
    let ndcg = qrels.ndcg_at(&hits, 10);
    let recall = qrels.recall_at(&hits, 100);
    let j = serde_json::json!({
        "index": dir.display().to_string(),
        "mode": a.mode.to_string(),
        "pipeline": a.pipeline.as_ref().unwrap_or(index.pipeline()).to_string(),
        "fusion": (a.mode == Mode::Hybrid).then(|| a.fusion.to_string()),
        "n_queries": texts.texts.len(),
        "ndcg_at_10": ndcg,
        "recall_at_100": recall,
        "search_seconds": secs,
    });
    if a.json {
        println!("{j}");
    } else {
        println!(
            "{} {}: nDCG@10 {ndcg:.4}, recall@100 {recall:.4} over {} queries ({secs:.2}s)",
            dir.display(),
            a.mode,
            texts.texts.len()
        );
    }
    Ok(())
}
