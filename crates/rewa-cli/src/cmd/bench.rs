use crate::data::log;
use anyhow::{bail, Context, Result};
use rewa::eval::{evaluate, ground_truth, EvalInput, Labels, Qrels, Report};
use rewa::synth::{generate, SynthConfig};
use rewa::{Metric, Pipeline, Prepared, Vectors};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// Print (markdown) and save (JSON) the comparison table of every encoder row on
/// (a) the seed's synthetic clusters with held-out queries (same classes, and new classes),
/// (b) SciFact all-MiniLM-L6-v2 embeddings (nDCG@10 from the test qrels),
/// (c) SIFT-small (L2). A data set whose folder is absent is skipped (and listed as skipped
/// in the JSON); a data set that is present but unreadable is an error, and so is a run
/// with no data set left to run.
#[derive(clap::Args)]
pub struct Args {
    /// Directory holding scifact/ and siftsmall/ (default: ../shared/data, whose absence only
    /// skips the real sets; a --data given that does not exist is an error).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Where to write the JSON results (checked to be writable before any row runs).
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
    /// Small sizes for a smoke run in seconds: synthetic 1,000 x 128, SciFact's first 1,500
    /// documents and 100 queries (no qrels), SIFT's first 2,000 vectors and 50 queries.
    #[arg(long)]
    quick: bool,
    /// Skip the seed's learned row (a learned encoder trained on the synthetic base, its
    /// recall on its own training vectors beside its recall on held-out queries).
    #[arg(long)]
    no_learned: bool,
}

const SETS: [&str; 4] = ["synth", "synth-new", "scifact", "sift"];

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

#[derive(Serialize)]
struct Skipped {
    name: String,
    reason: String,
}

/// The seed's claim, row by row: recall@k on the training vectors (own row left out) and on
/// held-out queries.
#[derive(Serialize)]
struct SeedRow {
    spec: String,
    train_recall: f64,
    held_out_same_classes: Option<f64>,
    held_out_new_classes: Option<f64>,
}

#[derive(Serialize)]
struct BenchJson {
    /// The kernels that ran (`avx2` or `baseline`).
    kernels: &'static str,
    quick: bool,
    sets: Vec<DataSet>,
    skipped: Vec<Skipped>,
    seed: Vec<SeedRow>,
}

pub fn table(rows: &[Report]) -> String {
    let k = rows.first().map_or(10, |r| r.k);
    let mut s = format!(
        "| spec | scanned B/vec | stored B/vec | vs float32 | recall@{k} | label P@{k} | nDCG@10 | QPS | fit s | reranked/query |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    );
    let opt = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{x:.3}"));
    for r in rows {
        s += &format!(
            "| `{}` | {} | {} | {:.1}x | {:.3} | {} | {} | {:.0} | {:.2} | {} |\n",
            r.spec,
            r.bytes_per_vector,
            r.stored_bytes_per_vector,
            r.compression,
            r.recall_at_k,
            opt(r.label_precision_at_k),
            opt(r.ndcg_at_10),
            r.qps,
            r.fit_seconds,
            // the hits the first stage handed to the reranks
            match r.stage_hits.as_slice() {
                [first, _, ..] => format!("{first:.1}"),
                _ => "-".into(),
            }
        );
    }
    s
}

/// What the table's columns mean, printed once under the first table.
pub const LEGEND: &str = "Legend: *scanned B/vec* the bytes per vector the first stage reads; *stored B/vec* the index's bytes per vector in all (every code set, plus the float vectors an `exact` stage rescores with); *vs float32* 4 x dim / stored bytes (below 1x: the index is larger than the raw vectors); *recall@k* the share of the exact top k found, on held-out queries; *label P@k* the share of hits with the query's class; *nDCG@10* from the qrels; *QPS* queries per second on every core; *reranked/query* the candidates the first stage hands to the next.";

/// One line: the best recall at 8x compression or more, and the best recall overall.
pub fn conclusion(rows: &[Report]) -> String {
    let best = |min_compression: f64| {
        rows.iter()
            .filter(|r| r.compression >= min_compression)
            .max_by(|a, b| a.recall_at_k.total_cmp(&b.recall_at_k))
    };
    let k = rows.first().map_or(10, |r| r.k);
    let mut s = String::from("In short:");
    if let Some(r) = best(8.0) {
        s += &format!(
            " at 8x smaller than float32 or more, `{}` finds the most ({:.3} recall@{k}, {} stored bytes per vector);",
            r.spec, r.recall_at_k, r.stored_bytes_per_vector
        );
    } else {
        s += " no row is 8x smaller than float32;";
    }
    if let Some(r) = best(0.0) {
        s += &format!(
            " the best recall, {:.3}, is `{}`'s at {:.0} QPS and {:.1}x.",
            r.recall_at_k, r.spec, r.qps, r.compression
        );
    }
    s
}

struct Set {
    name: &'static str,
    note: String,
    base: Prepared<'static>,
    queries: Prepared<'static>,
    train: Option<Prepared<'static>>,
    labels: Option<(Vec<i64>, Vec<i64>)>,
    qrels: Option<Qrels>,
}

fn prepared(v: Vectors, metric: Metric) -> Result<Prepared<'static>> {
    Ok(metric.prepare_owned(v)?)
}

fn first(v: Vectors, n: usize) -> Vectors {
    v.view().slice(0, n.min(v.len())).to_owned()
}

fn synth_sets(want_same: bool, want_new: bool, quick: bool) -> Result<Vec<Set>> {
    let cfg = if quick {
        SynthConfig {
            classes: 20,
            per_class: 50,
            dim: 128,
            queries_per_class: 5,
            new_classes: 4,
            ..Default::default()
        }
    } else {
        SynthConfig::default()
    };
    let d = generate(&cfg)?;
    let mut out = Vec::new();
    let note = format!(
        "rewa synth seed {}: {} classes x {}, dim {}, noise {}",
        cfg.seed, cfg.classes, cfg.per_class, cfg.dim, cfg.noise
    );
    let m = Metric::Cosine;
    if want_same {
        out.push(Set {
            name: "synth",
            note: format!(
                "{note}; {} held-out queries from the same classes; fit on base",
                d.queries_same.len()
            ),
            base: prepared(d.base.clone(), m)?,
            queries: prepared(d.queries_same.clone(), m)?,
            train: None,
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
            base: prepared(d.base_new, m)?,
            queries: prepared(d.queries_new, m)?,
            train: Some(prepared(d.base, m)?),
            labels: Some((d.base_new_labels, d.queries_new_labels)),
            qrels: None,
        });
    }
    Ok(out)
}

fn read(path: &Path) -> Result<Vectors> {
    rewa::io::read_vectors(path).with_context(|| format!("reading {}", path.display()))
}

fn scifact(dir: &Path, quick: bool) -> Result<Set> {
    let e = dir.join("emb_all-MiniLM-L6-v2");
    let m = Metric::Cosine;
    let (mut base, mut queries) = (read(&e.join("docs.npy"))?, read(&e.join("queries.npy"))?);
    let qrels = Qrels::load(
        &dir.join("qrels/test.tsv"),
        &e.join("doc_ids.txt"),
        &e.join("query_ids.txt"),
    )?;
    qrels.check_rows(base.len(), queries.len())?;
    if quick {
        base = first(base, 1500);
        queries = first(queries, 100);
    }
    let note = if quick {
        format!(
            "SciFact all-MiniLM-L6-v2, quick: the first {} docs and {} queries for recall (no qrels); fit on docs",
            base.len(),
            queries.len()
        )
    } else {
        format!(
            "SciFact all-MiniLM-L6-v2: {} docs, all {} queries for recall, {} test queries for nDCG@10; fit on docs",
            base.len(),
            queries.len(),
            qrels.len()
        )
    };
    Ok(Set {
        name: "scifact",
        note,
        base: prepared(base, m)?,
        queries: prepared(queries, m)?,
        train: None,
        labels: None,
        qrels: (!quick).then_some(qrels),
    })
}

fn sift(dir: &Path, quick: bool) -> Result<Set> {
    let (mut base, mut queries) = (
        read(&dir.join("siftsmall_base.fvecs"))?,
        read(&dir.join("siftsmall_query.fvecs"))?,
    );
    if quick {
        base = first(base, 2000);
        queries = first(queries, 50);
    }
    Ok(Set {
        name: "sift",
        note: format!(
            "SIFT-small: {} base, {} queries, L2; fit on base",
            base.len(),
            queries.len()
        ),
        base: prepared(base, Metric::L2)?,
        queries: prepared(queries, Metric::L2)?,
        train: None,
        labels: None,
        qrels: None,
    })
}

pub fn run(a: Args) -> Result<()> {
    if a.k == 0 {
        bail!(rewa::Error::InvalidInput("--k must be at least 1".into()));
    }
    let only: Vec<&str> = a.only.split(',').map(str::trim).collect();
    if let Some(bad) = only.iter().find(|s| !SETS.contains(s)) {
        bail!(rewa::Error::InvalidInput(format!(
            "--only: unknown data set {bad:?} (known: {})",
            SETS.join(", ")
        )));
    }
    let mut specs = rows(usize::MAX);
    if let Some(x) = &a.extra {
        specs.extend(x.split(';').map(|r| {
            if r.contains(':') {
                r.to_string()
            } else {
                format!("{r}:K")
            }
        }));
    }
    // Every row parses, and the results can be written, before any data is read.
    for spec in &specs {
        let text = spec.replace(":K", &format!(":{}", a.k));
        text.parse::<Pipeline>()
            .with_context(|| format!("bench row {text}"))?;
    }
    check_writable(&a.out)?;
    let wants_real = only.iter().any(|s| matches!(*s, "scifact" | "sift"));
    let data = match &a.data {
        Some(d) if wants_real && !d.is_dir() => bail!(
            "--data {}: no such directory (it should hold scifact/ and siftsmall/; for the synthetic sets alone pass --only synth,synth-new)",
            d.display()
        ),
        Some(d) => d.clone(),
        None => PathBuf::from("../shared/data"),
    };
    let mut sets = synth_sets(
        only.contains(&"synth"),
        only.contains(&"synth-new"),
        a.quick,
    )?;
    let mut skipped = Vec::new();
    type Loader = fn(&Path, bool) -> Result<Set>;
    let real: [(&str, &str, Loader); 2] =
        [("scifact", "scifact", scifact), ("sift", "siftsmall", sift)];
    for (name, folder, load) in real {
        if !only.contains(&name) {
            continue;
        }
        let dir = data.join(folder);
        if !dir.is_dir() {
            let reason = format!("{} is absent", dir.display());
            log(&format!("skipping {name}: {reason}"));
            skipped.push(Skipped {
                name: name.into(),
                reason,
            });
            continue;
        }
        sets.push(
            load(&dir, a.quick)
                .with_context(|| format!("loading {name} from {}", dir.display()))?,
        );
    }
    if sets.is_empty() {
        let why: Vec<String> = skipped
            .iter()
            .map(|s| format!("{}: {}", s.name, s.reason))
            .collect();
        bail!(
            "no data set to run ({}); give --data DIR holding scifact/ or siftsmall/, or --only synth",
            why.join("; ")
        );
    }
    // The seed's learned row: trained on the synthetic base (the fit set of both synth sets).
    let synth_train = sets.iter().find_map(|s| match s.name {
        "synth" => Some(&s.base),
        "synth-new" => s.train.as_ref(),
        _ => None,
    });
    let learned = match synth_train {
        Some(train) if !a.no_learned => Some(train_seed_model(train, &a.out, a.quick)?),
        _ => None,
    };
    let seed_specs: Vec<String> = learned
        .iter()
        .map(|dir| format!("learned=\"{}\"", dir.display()))
        .chain([
            "hadamard256".into(),
            format!("pca{}", 256.min(synth_train.map_or(256, |t| t.dim()))),
            "flat".into(),
        ])
        .collect();
    let mut out = Vec::new();
    let mut md = String::new();
    for s in &sets {
        let gt = ground_truth(&s.base, &s.queries, a.k);
        let inp = EvalInput {
            base: &s.base,
            queries: &s.queries,
            train: s.train.as_ref(),
            k: a.k,
            seed: 42,
            labels: s.labels.as_ref().map(|(b, q)| Labels {
                base: b,
                queries: q,
            }),
            qrels: s.qrels.as_ref(),
            queries_are_base: false,
            truth: Some(&gt),
        };
        let mut reports = Vec::new();
        let seed_rows = match (s.name, &learned) {
            ("synth" | "synth-new", Some(_)) => vec![format!("{}:K", seed_specs[0])],
            _ => Vec::new(),
        };
        for spec in rows(s.base.dim())
            .into_iter()
            .chain(specs[rows(usize::MAX).len()..].iter().cloned())
            .chain(seed_rows)
        {
            let text = spec.replace(":K", &format!(":{}", a.k));
            let p: Pipeline = text.parse().with_context(|| format!("row {text}"))?;
            let label = if p.stages().len() == 1 {
                p.stages()[0].scorer.to_string()
            } else {
                text.clone()
            };
            log(&format!("{}: {label}", s.name));
            reports
                .push(evaluate(&p, &label, &inp).with_context(|| format!("{}: {label}", s.name))?);
        }
        let legend = if out.is_empty() {
            format!("{LEGEND}\n\n")
        } else {
            String::new()
        };
        md += &format!(
            "### {}\n{}\n\n{}\n{}\n\n{legend}",
            s.name,
            s.note,
            table(&reports),
            conclusion(&reports)
        );
        out.push(DataSet {
            name: s.name.to_string(),
            note: s.note.clone(),
            rows: reports,
        });
    }
    let mut seed = Vec::new();
    if let Some(train) = synth_train {
        let held = |set: &str, spec: &str| {
            out.iter()
                .filter(|d: &&DataSet| d.name == set)
                .flat_map(|d| &d.rows)
                .find(|r| r.spec == spec)
                .map(|r| r.recall_at_k)
        };
        for spec in &seed_specs {
            let p: Pipeline = format!("{spec}:{}", a.k).parse()?;
            let label = p.stages()[0].scorer.to_string();
            log(&format!("seed table: train recall of {label}"));
            seed.push(SeedRow {
                train_recall: rewa::eval::train_recall(&p, train, 1000, a.k, 42)?,
                held_out_same_classes: held("synth", &label),
                held_out_new_classes: held("synth-new", &label),
                spec: label,
            });
        }
        let opt = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{x:.3}"));
        md += &format!(
            "### seed: recall@{k} on the training vectors vs held-out queries\nThe seed reported recall on its own training set. Train recall: the first 1,000 synthetic base vectors (the fit set) as queries, each one's own row left out; held-out: the synth and synth-new queries above.\n\n| encoder | train recall@{k} | held-out same classes | held-out new classes | gap (train - same) |\n|---|---:|---:|---:|---:|\n",
            k = a.k
        );
        for r in &seed {
            md += &format!(
                "| `{}` | {:.3} | {} | {} | {} |\n",
                r.spec,
                r.train_recall,
                opt(r.held_out_same_classes),
                opt(r.held_out_new_classes),
                opt(r.held_out_same_classes.map(|h| r.train_recall - h)),
            );
        }
    }
    println!("{md}");
    let json = BenchJson {
        kernels: rewa::simd::level(),
        quick: a.quick,
        sets: out,
        skipped,
        seed,
    };
    rewa::io::write_text(&a.out, &serde_json::to_string_pretty(&json)?)
        .with_context(|| format!("writing {}", a.out.display()))?;
    log(&format!("wrote {}", a.out.display()));
    Ok(())
}

/// Fails unless `out` can be written: not a directory, an existing file open for writing, and
/// a folder that takes a new file (probed with one, removed at once), so that a run of many
/// minutes does not end in a write error.
fn check_writable(out: &Path) -> Result<()> {
    let ctx = || format!("--out {}", out.display());
    if out.is_dir() {
        bail!("--out {} is a directory; give a file name", out.display());
    }
    if out.exists() {
        std::fs::OpenOptions::new()
            .append(true)
            .open(out)
            .with_context(ctx)?;
    }
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let probe = parent.join(format!(".rewa-bench-probe-{}", std::process::id()));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
        .with_context(|| format!("{}: cannot write in {}", ctx(), parent.display()))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// The `trained_by` of the seed row's model directory.
const SEED_TAG: &str = "rewa bench (seed row)";

/// Trains the seed's learned encoder (self-supervised on exact neighbours with ranking
/// distillation, 256 outputs; 10 epochs in a quick run) on `train` and saves it beside `out`
/// (`<out stem>-learned/`); returns the directory.
fn train_seed_model(train: &Prepared<'_>, out: &Path, quick: bool) -> Result<PathBuf> {
    let stem = out
        .file_stem()
        .map_or("rewa-bench".into(), |s| s.to_string_lossy().into_owned());
    let dir = out.with_file_name(format!("{stem}-learned"));
    // replace only a model an earlier bench wrote: never a folder of the user's
    if dir.exists() {
        let ours = rewa::encode::LearnedTransform::load(&dir)
            .map(|(_, c)| c.training.get("trained_by").and_then(|v| v.as_str()) == Some(SEED_TAG))
            .unwrap_or(false);
        if !ours {
            bail!(rewa::Error::InvalidInput(format!(
                "the seed row's model goes to {}, which exists and is not a model an earlier `rewa bench` wrote; move it, choose another --out, or pass --no-learned",
                dir.display()
            )));
        }
    }
    let cfg = rewa_train::TrainConfig {
        dim: 256.min(train.dim()),
        epochs: if quick { 10 } else { 60 },
        ..Default::default()
    };
    log(&format!(
        "seed row: training a learned encoder {} -> {} on the {} synthetic base vectors",
        train.dim(),
        cfg.dim,
        train.len()
    ));
    let o = rewa_train::train(
        train.view(),
        &rewa_train::Supervision::Neighbours,
        &cfg,
        train.metric(),
        &mut rewa_train::Quiet,
    )?;
    o.model.save(
        &dir,
        serde_json::json!({"trained_by": SEED_TAG, "best_epoch": o.best_epoch, "seconds": o.seconds}),
    )?;
    log(&format!(
        "seed row: best epoch {} in {:.1} s, model in {}",
        o.best_epoch,
        o.seconds,
        dir.display()
    ));
    Ok(dir)
}
