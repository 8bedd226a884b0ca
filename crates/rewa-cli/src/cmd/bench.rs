use super::eval::{evaluate, truth, Input, Report};
use crate::data::{load, log};
use anyhow::{Context, Result};
use rewa::eval::Qrels;
use rewa::synth::{generate, SynthConfig};
use rewa::{Metric, Pipeline, Vectors};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// Print (markdown) and save (JSON) the comparison table of every encoder row on
/// (a) the seed's synthetic clusters with held-out queries (same classes, and new classes),
/// (b) SciFact all-MiniLM-L6-v2 embeddings (nDCG@10 from the test qrels),
/// (c) SIFT-small (L2). Missing data sets are skipped with a note.
#[derive(clap::Args)]
pub struct Args {
    /// Directory holding scifact/ and siftsmall/.
    #[arg(long, default_value = "../shared/data")]
    data: PathBuf,
    /// Where to write the JSON results.
    #[arg(long, default_value = "rewa-bench.json")]
    out: PathBuf,
    /// Number of neighbours.
    #[arg(long, default_value_t = 10)]
    k: usize,
    /// Comma-separated data sets to run: synth, synth-new, scifact, sift.
    #[arg(long, default_value = "synth,synth-new,scifact,sift")]
    only: String,
    /// Extra rows (encoder specs or pipelines), comma-separated stages joined by ';'.
    #[arg(long)]
    extra: Option<String>,
}

/// The table's rows for input dimension `dim`.
fn rows(dim: usize) -> Vec<String> {
    let p = 256.min(dim);
    vec![
        "hadamard16+sign:K".into(),
        "hadamard256+sign:K".into(),
        "hadamard256+asign:K".into(),
        "pq32:K".into(),
        "opq32+pq32:K".into(),
        "hadamard256+int8:K".into(),
        "hadamard256:K".into(),
        format!("pca{p}:K"),
        "flat:K".into(),
        "hadamard512+sign:200,exact:K".into(),
        "hadamard256+asign:200,exact:K".into(),
        "opq32+pq32:100,exact:K".into(),
        "hadamard512+sign:500,hadamard256+int8:50,exact:K".into(),
    ]
}

#[derive(Serialize)]
struct DataSet {
    name: String,
    note: String,
    rows: Vec<Report>,
}

pub fn table(rows: &[Report]) -> String {
    let k = rows.first().map_or(10, |r| r.k);
    let mut s = format!(
        "| spec | bytes/vec | compression | recall@{k} | label P@{k} | nDCG@10 | QPS | fit s |\n|---|---:|---:|---:|---:|---:|---:|---:|\n"
    );
    let opt = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{x:.3}"));
    for r in rows {
        s += &format!(
            "| `{}` | {} | {:.1}x | {:.3} | {} | {} | {:.0} | {:.2} |\n",
            r.spec,
            r.bytes_per_vector,
            r.compression,
            r.recall_at_k,
            opt(r.label_precision_at_k),
            opt(r.ndcg_at_10),
            r.qps,
            r.fit_seconds
        );
    }
    s
}

struct Set {
    name: &'static str,
    note: String,
    base: Vectors,
    queries: Vectors,
    train: Option<Vectors>,
    metric: Metric,
    labels: Option<(Vec<i64>, Vec<i64>)>,
    qrels: Option<Qrels>,
}

fn synth_sets(want_same: bool, want_new: bool) -> Result<Vec<Set>> {
    let cfg = SynthConfig::default();
    let d = generate(&cfg)?;
    let mut out = Vec::new();
    let note = format!(
        "rewa synth seed {}: {} classes x {}, dim {}, noise {}",
        cfg.seed, cfg.classes, cfg.per_class, cfg.dim, cfg.noise
    );
    if want_same {
        out.push(Set {
            name: "synth",
            note: format!(
                "{note}; {} held-out queries from the same classes; fit on base",
                d.queries_same.len()
            ),
            base: d.base.clone(),
            queries: d.queries_same.clone(),
            train: None,
            metric: Metric::Cosine,
            labels: Some((d.labels.clone(), d.queries_same_labels.clone())),
            qrels: None,
        });
    }
    if want_new {
        out.push(Set {
            name: "synth-new",
            note: format!(
                "{note}; {} new classes: base {} and {} queries never seen in fitting (fit on the old-class base)",
                cfg.new_classes,
                d.base_new.len(),
                d.queries_new.len()
            ),
            base: d.base_new,
            queries: d.queries_new,
            train: Some(d.base),
            metric: Metric::Cosine,
            labels: Some((d.base_new_labels, d.queries_new_labels)),
            qrels: None,
        });
    }
    Ok(out)
}

fn scifact(dir: &Path) -> Result<Set> {
    let e = dir.join("emb_all-MiniLM-L6-v2");
    let base = load(&e.join("docs.npy"), Metric::Cosine)?;
    let queries = load(&e.join("queries.npy"), Metric::Cosine)?;
    let qrels = Qrels::load(
        &dir.join("qrels/test.tsv"),
        &e.join("doc_ids.txt"),
        &e.join("query_ids.txt"),
    )?;
    Ok(Set {
        name: "scifact",
        note: format!(
            "SciFact all-MiniLM-L6-v2: {} docs, all {} queries for recall, {} test queries for nDCG@10; fit on docs",
            base.len(),
            queries.len(),
            qrels.len()
        ),
        base,
        queries,
        train: None,
        metric: Metric::Cosine,
        labels: None,
        qrels: Some(qrels),
    })
}

fn sift(dir: &Path) -> Result<Set> {
    let base = load(&dir.join("siftsmall_base.fvecs"), Metric::L2)?;
    let queries = load(&dir.join("siftsmall_query.fvecs"), Metric::L2)?;
    Ok(Set {
        name: "sift",
        note: format!(
            "SIFT-small: {} base, {} queries, L2; fit on base",
            base.len(),
            queries.len()
        ),
        base,
        queries,
        train: None,
        metric: Metric::L2,
        labels: None,
        qrels: None,
    })
}

pub fn run(a: Args) -> Result<()> {
    let only: Vec<&str> = a.only.split(',').map(str::trim).collect();
    let mut sets = synth_sets(only.contains(&"synth"), only.contains(&"synth-new"))?;
    if only.contains(&"scifact") {
        match scifact(&a.data.join("scifact")) {
            Ok(s) => sets.push(s),
            Err(e) => log(&format!("skipping scifact: {e:#}")),
        }
    }
    if only.contains(&"sift") {
        match sift(&a.data.join("siftsmall")) {
            Ok(s) => sets.push(s),
            Err(e) => log(&format!("skipping sift: {e:#}")),
        }
    }
    let mut out = Vec::new();
    let mut md = String::new();
    for s in &sets {
        let gt = truth(&s.base, &s.queries, s.metric, 100.max(a.k + 1));
        let inp = Input {
            base: &s.base,
            queries: &s.queries,
            train: s.train.as_ref(),
            metric: s.metric,
            k: a.k,
            seed: 42,
            labels: s.labels.as_ref().map(|(b, q)| (&b[..], &q[..], false)),
            qrels: s.qrels.as_ref(),
            truth: Some(&gt),
        };
        let mut specs = rows(s.base.dim());
        if let Some(x) = &a.extra {
            specs.extend(x.split(';').map(|r| {
                if r.contains(':') {
                    r.to_string()
                } else {
                    format!("{r}:K")
                }
            }));
        }
        let mut reports = Vec::new();
        for spec in specs {
            let text = spec.replace(":K", &format!(":{}", a.k));
            let p: Pipeline = text.parse().with_context(|| format!("row {text}"))?;
            let label = if p.stages.len() == 1 {
                p.stages[0].scorer.to_string()
            } else {
                text.clone()
            };
            log(&format!("{}: {label}", s.name));
            reports.push(evaluate(&p, &label, &inp)?);
        }
        md += &format!("### {}\n{}\n\n{}\n", s.name, s.note, table(&reports));
        out.push(DataSet {
            name: s.name.to_string(),
            note: s.note.clone(),
            rows: reports,
        });
    }
    println!("{md}");
    std::fs::write(&a.out, serde_json::to_string_pretty(&out)?)
        .with_context(|| format!("writing {}", a.out.display()))?;
    log(&format!("wrote {}", a.out.display()));
    Ok(())
}
