//! Commands over a persistent index: build, add, search, info, tune.

use crate::data::{load, load_train, log};
use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use rewa::eval::recall_at_k;
use rewa::search::exact_search;
use rewa::{Index, IndexSpec, Metric, Pipeline, SearchParams, Vectors};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Fit every encoder the pipeline names, encode the base, and save an index directory.
#[derive(clap::Args)]
pub struct BuildArgs {
    /// Vectors to index (.npy, .fvecs, .bvecs).
    #[arg(long)]
    base: PathBuf,
    /// Default pipeline; float vectors are stored when it has an exact stage.
    #[arg(
        long,
        default_value = "hadamard512+sign:2000,hadamard256+int8:200,exact:10"
    )]
    pipeline: Pipeline,
    /// Index directory to write.
    #[arg(long)]
    out: PathBuf,
    /// Vectors to fit encoders on (default: --base).
    #[arg(long)]
    train: Option<PathBuf>,
    /// cosine (normalises), ip or l2.
    #[arg(long, default_value = "cosine")]
    metric: Metric,
    /// Seed for encoder fitting.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Print one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

/// Append vectors to an index; ids continue from the current count.
#[derive(clap::Args)]
pub struct AddArgs {
    /// Index directory.
    #[arg(long)]
    index: PathBuf,
    /// Vectors to append.
    #[arg(long)]
    base: PathBuf,
    /// Print one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

/// Search an index; results as TSV (query, rank, id, score) or .npy ids (by --out's extension).
#[derive(clap::Args)]
pub struct SearchArgs {
    /// Index directory.
    #[arg(long)]
    index: PathBuf,
    /// Query vectors.
    #[arg(long)]
    queries: PathBuf,
    /// Neighbours per query.
    #[arg(long, default_value_t = 10)]
    k: usize,
    /// Override the index's default pipeline (same encoders, other keeps).
    #[arg(long)]
    pipeline: Option<Pipeline>,
    /// Output file: .tsv (default on stdout without --json) or .npy (int64 ids, -1 padded).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print one JSON summary object on stdout.
    #[arg(long)]
    json: bool,
}

/// Show an index's counts, specs, bytes per vector, file sizes and format version.
#[derive(clap::Args)]
pub struct InfoArgs {
    /// Index directory.
    #[arg(long)]
    index: PathBuf,
    /// Print one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

/// Find the keep sizes that reach a target recall@k on validation queries at the highest QPS,
/// print the curve, and store the chosen pipeline as the index default.
#[derive(clap::Args)]
pub struct TuneArgs {
    /// Index directory (must store float vectors: ground truth is exact search over them).
    #[arg(long)]
    index: PathBuf,
    /// Validation queries (not the queries you will report on).
    #[arg(long)]
    queries: PathBuf,
    /// Target recall@k.
    #[arg(long, default_value_t = 0.95)]
    target_recall: f64,
    /// Neighbours per query.
    #[arg(long, default_value_t = 10)]
    k: usize,
    /// Largest keep tried for any stage (default: the index size). At a million vectors the
    /// settings with huge keeps are slow to measure and slower than exact search anyway.
    #[arg(long)]
    max_keep: Option<usize>,
    /// Print one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

fn add_with_progress(index: &mut Index, data: &Vectors) -> Result<()> {
    let pb = ProgressBar::new(data.len() as u64).with_style(
        ProgressStyle::with_template(
            "encoding {bar:40} {pos}/{len} vectors ({per_sec}, eta {eta})",
        )
        .expect("valid template"),
    );
    const CHUNK: usize = 65536;
    index.reserve(data.len());
    let v = data.view();
    for start in (0..data.len()).step_by(CHUNK) {
        let end = (start + CHUNK).min(data.len());
        index.add(v.slice(start, end))?;
        pb.set_position(end as u64);
    }
    pb.finish_and_clear();
    Ok(())
}

fn open(dir: &Path) -> Result<Index> {
    let t = Instant::now();
    let index = Index::open(dir).with_context(|| format!("opening index {}", dir.display()))?;
    log(&format!(
        "opened {} ({} vectors) in {:.3}s",
        dir.display(),
        index.len(),
        t.elapsed().as_secs_f64()
    ));
    Ok(index)
}

/// Opens an index and reads a vector file with its metric, checking the dimension.
fn open_with(dir: &Path, file: &Path) -> Result<(Index, Vectors)> {
    let index = open(dir)?;
    let v = load(file, index.metric())?;
    if v.dim() != index.dim() {
        return Err(anyhow::Error::new(rewa::Error::DimMismatch {
            expected: index.dim(),
            got: v.dim(),
        }))
        .with_context(|| {
            format!(
                "{} has dimension {}, the index {}",
                file.display(),
                v.dim(),
                index.dim()
            )
        });
    }
    Ok((index, v))
}

pub fn build(a: BuildArgs) -> Result<()> {
    let t0 = Instant::now();
    let base = load(&a.base, a.metric)?;
    let train = load_train(a.train.as_deref(), a.metric, &base, &a.base)?;
    let spec = IndexSpec {
        metric: a.metric,
        pipeline: a.pipeline.clone(),
        seed: a.seed,
    };
    let t = Instant::now();
    let mut index = Index::fit(&spec, train.as_ref().unwrap_or(&base).view())?;
    log(&format!(
        "fitted {} in {:.2}s",
        a.pipeline,
        t.elapsed().as_secs_f64()
    ));
    add_with_progress(&mut index, &base)?;
    index
        .save(&a.out)
        .with_context(|| format!("saving {}", a.out.display()))?;
    let secs = t0.elapsed().as_secs_f64();
    log(&format!(
        "built {} vectors into {} in {secs:.2}s",
        index.len(),
        a.out.display()
    ));
    if a.json {
        println!(
            "{}",
            json!({"count": index.len(), "seconds": secs, "pipeline": index.pipeline().to_string()})
        );
    }
    Ok(())
}

pub fn add(a: AddArgs) -> Result<()> {
    let t0 = Instant::now();
    let (mut index, data) = open_with(&a.index, &a.base)?;
    add_with_progress(&mut index, &data)?;
    index.save(&a.index)?;
    let secs = t0.elapsed().as_secs_f64();
    log(&format!(
        "added {} vectors; {} in all",
        data.len(),
        index.len()
    ));
    if a.json {
        println!(
            "{}",
            json!({"count": index.len(), "added": data.len(), "seconds": secs})
        );
    }
    Ok(())
}

pub fn search(a: SearchArgs) -> Result<()> {
    let (index, queries) = open_with(&a.index, &a.queries)?;
    let pipeline = a
        .pipeline
        .clone()
        .unwrap_or_else(|| index.pipeline().clone());
    let params = SearchParams {
        k: a.k,
        pipeline: Some(pipeline.clone()),
    };
    let t = Instant::now();
    let hits = index.search_batch(queries.view(), &params)?;
    let secs = t.elapsed().as_secs_f64();
    let qps = queries.len() as f64 / secs.max(1e-9);
    let mut tsv = String::new();
    for (qi, hs) in hits.iter().enumerate() {
        for (rank, h) in hs.iter().enumerate() {
            // Scores are similarities for cosine/ip, squared distances for l2.
            let score = if index.metric() == Metric::L2 {
                h.distance
            } else {
                -h.distance
            };
            tsv += &format!("{qi}\t{}\t{}\t{score}\n", rank + 1, h.id);
        }
    }
    match &a.out {
        Some(p) if p.extension().is_some_and(|e| e == "npy") => {
            let ids: Vec<i64> = hits
                .iter()
                .flat_map(|hs| (0..a.k).map(move |r| hs.get(r).map_or(-1, |h| h.id as i64)))
                .collect();
            rewa::io::write_npy_i64(p, &[queries.len(), a.k], &ids)?;
        }
        Some(p) => std::fs::write(p, "query\trank\tid\tscore\n".to_string() + &tsv)
            .with_context(|| format!("writing {}", p.display()))?,
        None if !a.json => print!("query\trank\tid\tscore\n{tsv}"),
        None => {}
    }
    log(&format!(
        "{} queries in {secs:.3}s ({qps:.0} QPS)",
        queries.len()
    ));
    if a.json {
        println!(
            "{}",
            json!({"n_queries": queries.len(), "k": a.k, "pipeline": pipeline.to_string(), "qps": qps, "seconds": secs})
        );
    }
    Ok(())
}

pub fn info(a: InfoArgs) -> Result<()> {
    let index = open(&a.index)?;
    let fi = rewa::index::format::info(&a.index)?;
    let specs: Vec<String> = index
        .code_sets()
        .iter()
        .map(|c| format!("{} ({} B)", c.encoder().spec(), c.encoder().code_len()))
        .collect();
    if a.json {
        println!(
            "{}",
            json!({"count": index.len(), "dim": index.dim(), "metric": index.metric().to_string(),
                   "pipeline": index.pipeline().to_string(), "bytes_per_vector": index.bytes_per_vector(),
                   "format_version": fi.format_version, "code_sets": specs, "has_vectors": index.vectors().is_some(),
                   "files": fi.files, "disk_bytes": fi.disk_bytes})
        );
    } else {
        println!("count           {}", index.len());
        println!("dim             {}", index.dim());
        println!("metric          {}", index.metric());
        println!("pipeline        {}", index.pipeline());
        println!("code sets       {}", specs.join(", "));
        println!(
            "float vectors   {}",
            if index.vectors().is_some() {
                "stored"
            } else {
                "not stored"
            }
        );
        println!("bytes/vector    {}", index.bytes_per_vector());
        println!("format version  {}", fi.format_version);
        for (f, n) in &fi.files {
            println!("  {f:<28} {n:>14} bytes");
        }
        println!("on disk         {} bytes", fi.disk_bytes);
    }
    Ok(())
}

pub fn tune(a: TuneArgs) -> Result<()> {
    let (mut index, queries) = open_with(&a.index, &a.queries)?;
    let Some(vectors) = index.vectors() else {
        bail!("tune needs the index's float vectors for ground truth; build with a pipeline that has an exact stage")
    };
    let k = a.k;
    let gt = exact_search(vectors, queries.view(), index.metric(), k);
    let base = index.pipeline().clone();
    let n = index.len();
    let free = base.stages.len() - 1;
    // Candidate keeps for every stage but the last (which keeps k): k * 2^i up to n.
    let top = a.max_keep.unwrap_or(n).clamp(k, n);
    let mut cands: Vec<usize> = std::iter::successors(Some(k * 2), |c| Some(c * 2))
        .take_while(|&c| c < top)
        .collect();
    cands.push(top);
    let mut grid: Vec<Vec<usize>> = vec![vec![]];
    for _ in 0..free {
        grid = grid
            .into_iter()
            .flat_map(|g| {
                let cap = g.last().copied().unwrap_or(usize::MAX);
                cands
                    .iter()
                    .filter(move |&&c| c <= cap)
                    .map(move |&c| [g.clone(), vec![c]].concat())
                    .collect::<Vec<_>>()
            })
            .collect();
    }
    let mut curve: Vec<(Pipeline, f64, f64, Vec<usize>)> = Vec::new();
    let measure = |index: &Index, keeps: &[usize]| -> Result<(Pipeline, f64, f64)> {
        let mut keeps = keeps.to_vec();
        keeps.push(k);
        let p = base.with_keeps(&keeps)?;
        let t = Instant::now();
        let hits = index.search_batch(
            queries.view(),
            &SearchParams {
                k,
                pipeline: Some(p.clone()),
            },
        )?;
        let qps = queries.len() as f64 / t.elapsed().as_secs_f64().max(1e-9);
        let r = recall_at_k(&hits, &gt, k);
        eprintln!("  {p:<60} recall@{k} {r:.4}  {qps:>9.0} QPS");
        Ok((p, r, qps))
    };
    // Keeps that reached the target. A setting whose every keep is at least those of one of
    // them does more work for no better recall than needed, so it is not measured; the grid
    // is in ascending order, so those come after.
    let mut met_keeps: Vec<Vec<usize>> = Vec::new();
    for keeps in grid {
        if met_keeps
            .iter()
            .any(|m| m.iter().zip(&keeps).all(|(m, c)| c >= m))
        {
            continue;
        }
        let (p, r, qps) = measure(&index, &keeps)?;
        if r >= a.target_recall {
            met_keeps.push(keeps.clone());
        }
        curve.push((p, r, qps, keeps));
    }
    // The doubling grid overshoots a stage's keep by up to 2x: bisect each stage of the
    // fastest setting that met the target between half its keep and its keep (recall grows
    // with keep), three steps each, taking any smaller keep that still meets the target.
    let mut refined = curve
        .iter()
        .filter(|c| c.1 >= a.target_recall)
        .max_by(|a, b| a.2.total_cmp(&b.2))
        .cloned();
    if let Some(start) = refined.clone() {
        let mut keeps = start.3;
        for s in 0..free {
            let floor = keeps.get(s + 1).copied().unwrap_or(k);
            let (mut lo, mut hi) = ((keeps[s] / 2).max(floor), keeps[s]);
            for _ in 0..3 {
                let mid = (lo + hi) / 2;
                if mid <= lo || mid >= hi {
                    break;
                }
                let mut trial = keeps.clone();
                trial[s] = mid;
                let (p, r, qps) = measure(&index, &trial)?;
                let entry = (p, r, qps, trial.clone());
                curve.push(entry.clone());
                if r >= a.target_recall {
                    hi = mid;
                    keeps = trial;
                    refined = Some(entry);
                } else {
                    lo = mid;
                }
            }
        }
    }
    let (chosen, met) = match refined {
        Some(c) => (c, true),
        None => (
            curve
                .iter()
                .max_by(|a, b| a.1.total_cmp(&b.1))
                .cloned()
                .expect("invariant: grid is non-empty"),
            false,
        ),
    };
    if !met {
        log(&format!(
            "no setting reaches recall {}; keeping the best recall found",
            a.target_recall
        ));
    }
    index.set_pipeline(chosen.0.clone())?;
    index.save(&a.index)?;
    log(&format!(
        "default pipeline now {} (recall@{k} {:.4}, {:.0} QPS)",
        chosen.0, chosen.1, chosen.2
    ));
    if a.json {
        let c: Vec<_> = curve
            .iter()
            .map(|(p, r, q, _)| json!({"pipeline": p.to_string(), "recall_at_k": r, "qps": q}))
            .collect();
        println!(
            "{}",
            json!({"pipeline": chosen.0.to_string(), "recall_at_k": chosen.1, "qps": chosen.2, "target_met": met, "curve": c})
        );
    }
    Ok(())
}
