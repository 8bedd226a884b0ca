use crate::data::{labels, load, load_train, log};
use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use rewa::eval::Qrels;
use rewa::Metric;
use rewa_train::artifacts::{check_out_dir, fingerprint, record, RunDir};
use rewa_train::{EpochLog, Init, Observer, Qat, Supervision, TrainConfig};
use serde_json::json;
use std::path::PathBuf;

/// Train the learned encoder (an MLP: Linear -> LayerNorm -> GELU -> Dropout -> Linear ->
/// LayerNorm -> L2 norm) and write it to --out, ready for `learned=DIR` in any encoder spec.
///
/// Supervision: --labels (same label = positive), --pairs (query vectors + qrels: a query and
/// its relevant documents are positives), or by default self-supervised neighbour
/// distillation (each vector's exact nearest neighbours are its positives, and the batch's
/// full-space similarity distribution is the teacher). A share of the training vectors (of
/// the queries, with --pairs) is held out; every epoch logs loss and recall@10 on both parts,
/// training stops when validation stops improving, and the best epoch's weights are kept.
///
/// --out gets model.safetensors + config.json (the model), log.jsonl (one JSON line per
/// epoch) and training.png. The run is written to a hidden sibling of --out, updated as
/// epochs end, and renamed to --out when it finishes: a failed run changes nothing. Every
/// setting is checked before anything is written. Evaluation queries must never be given
/// here.
#[derive(clap::Args)]
pub struct Args {
    /// The vectors the encoder is for (.npy, .fvecs, .bvecs).
    #[arg(long)]
    base: PathBuf,
    /// Vectors to learn from instead of --base (labels and --pairs rows refer to these).
    #[arg(long)]
    train: Option<PathBuf>,
    /// Output dimension m.
    #[arg(long)]
    dim: usize,
    /// Output directory (created; must be missing or empty unless --force).
    #[arg(long)]
    out: PathBuf,
    /// Replace an existing, non-empty --out, once the new run has succeeded.
    #[arg(long)]
    force: bool,
    /// Labels of the training vectors: same label = positive.
    #[arg(long, conflicts_with = "pairs")]
    labels: Option<PathBuf>,
    /// Query vectors whose qrels pairs (--qrels, --doc-ids, --query-ids) give positives.
    #[arg(long, requires_all = ["qrels", "doc_ids", "query_ids"])]
    pairs: Option<PathBuf>,
    /// BEIR qrels TSV of the training queries (with --pairs).
    #[arg(long)]
    qrels: Option<PathBuf>,
    /// Ids of the training-vector rows, one per line (with --pairs).
    #[arg(long)]
    doc_ids: Option<PathBuf>,
    /// Ids of the --pairs query rows, one per line.
    #[arg(long)]
    query_ids: Option<PathBuf>,
    /// cosine (normalises inputs), ip or l2: the full-space similarity the model learns.
    #[arg(long, default_value = "cosine")]
    metric: Metric,
    /// Hidden width (default 2 x --dim; at most 65536).
    #[arg(long)]
    hidden: Option<usize>,
    /// Maximum epochs.
    #[arg(long, default_value_t = TrainConfig::default().epochs)]
    epochs: usize,
    /// Inputs per batch (half anchors, half their positives; at most 16384).
    #[arg(long, default_value_t = TrainConfig::default().batch)]
    batch: usize,
    /// Peak learning rate (AdamW; cosine-annealed to 1% of it). Default: 3e-3, or 3e-4 with
    /// --init pca (a fine-tune of a good start).
    #[arg(long)]
    lr: Option<f64>,
    /// AdamW weight decay.
    #[arg(long, default_value_t = TrainConfig::default().weight_decay)]
    weight_decay: f64,
    /// Initial temperature of the contrastive loss.
    #[arg(long, default_value_t = TrainConfig::default().temperature)]
    temperature: f64,
    /// Keep the temperature fixed (default: learned).
    #[arg(long)]
    fixed_temperature: bool,
    /// Weight of the ranking-distillation term (0 = off). Default: 50 self-supervised (the
    /// full space's ranking is the target), 1 with --labels or --pairs.
    #[arg(long)]
    distill: Option<f64>,
    /// Temperature of the full-space teacher distribution.
    #[arg(long, default_value_t = TrainConfig::default().teacher_temperature)]
    teacher_temperature: f64,
    /// Self-supervised positives: one of each vector's k exact nearest neighbours.
    #[arg(long, default_value_t = TrainConfig::default().neighbours)]
    neighbours: usize,
    /// Positives drawn per anchor: batches hold whole neighbourhoods.
    #[arg(long, default_value_t = TrainConfig::default().group)]
    group: usize,
    /// Dropout probability after the GELU.
    #[arg(long, default_value_t = TrainConfig::default().dropout)]
    dropout: f32,
    /// Standard deviation of Gaussian noise added to training inputs.
    #[arg(long, default_value_t = TrainConfig::default().input_noise)]
    input_noise: f32,
    /// Standard deviation of Gaussian noise added to each batch before both the full-space
    /// teacher and the network see it: fresh points every epoch, against memorisation.
    #[arg(long, default_value_t = TrainConfig::default().augment)]
    augment: f32,
    /// Share held out for validation (it must hold at least 12 vectors, or one query with
    /// --pairs).
    #[arg(long, default_value_t = TrainConfig::default().val_fraction)]
    val_fraction: f64,
    /// Epochs without validation improvement before stopping.
    #[arg(long, default_value_t = TrainConfig::default().patience)]
    patience: usize,
    /// Train for the codes the output will be stored as (one quantizer token): sign
    /// (Hamming, both sides quantized), or scored asymmetrically like the index scores them:
    /// asign, int8, rabitq<bits> (1-8), pq<m> (codebooks trained with the model, JPQ-style).
    /// pq<m> and rabitq<bits> keep their trained quantizer in the model directory, which
    /// `--encoder learned=DIR+pq<m>` uses instead of fitting one; --init pca is a good start.
    #[arg(long)]
    qat: Option<Qat>,
    /// Starting weights: random, or pca (the network starts as the PCA projection of the
    /// training part, the baseline it must beat; needs --hidden >= 2 * --dim).
    #[arg(long, default_value = "random")]
    init: Init,
    /// Seed (initialisation, split, batches, dropout, noise).
    #[arg(long, default_value_t = TrainConfig::default().seed)]
    seed: u64,
    /// Print one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

struct Bar {
    pb: ProgressBar,
}

impl Observer for Bar {
    fn step(&mut self, epoch: usize, step: usize, steps: usize, loss: f64) {
        if self.pb.length() == Some(0) {
            self.pb.set_length(steps as u64);
        }
        self.pb.set_position(step as u64);
        self.pb.set_message(format!("epoch {epoch} loss {loss:.4}"));
    }
    fn epoch(
        &mut self,
        e: &EpochLog,
        _: &rewa::encode::LearnedTransform,
        best: bool,
    ) -> rewa_train::Result<()> {
        let mut extra = String::new();
        if let Some(v) = e.val_label_precision {
            extra += &format!(" val label-p@10 {v:.3}");
        }
        if let Some(v) = e.val_qrels_recall {
            extra += &format!(" val qrels-r@10 {v:.3}");
        }
        if let Some(v) = e.val_recall_quantized {
            extra += &format!(" val quantized r@10 {v:.3}");
        }
        let line = format!(
            "epoch {:>3}  loss {:.4} / val {:.4}  recall@10 train {:.3} val {:.3}{extra}  temp {:.4}  {:.1}s+{:.1}s{}",
            e.epoch,
            e.train_loss,
            e.val_loss,
            e.train_recall,
            e.val_recall,
            e.temperature,
            e.train_seconds,
            e.eval_seconds,
            if best { "  *best" } else { "" }
        );
        self.pb.suspend(|| eprintln!("[rewa] {line}"));
        self.pb.set_position(0);
        Ok(())
    }
}

pub fn run(a: Args) -> Result<()> {
    // fail before reading any data when --out cannot take the run
    check_out_dir(&a.out, a.force)?;
    let base = load(&a.base, a.metric)?;
    let train_path = a.train.clone().unwrap_or_else(|| a.base.clone());
    let data = load_train(a.train.as_deref(), a.metric, &base, &a.base)?.unwrap_or(base);
    let (sup, extra_fp) = match (&a.labels, &a.pairs) {
        (Some(l), _) => {
            let l = labels(l, data.len(), &train_path)?;
            let bytes: Vec<u8> = l.iter().flat_map(|v| v.to_le_bytes()).collect();
            (Supervision::Labels(l), bytes)
        }
        (None, Some(qp)) => {
            let queries = load(qp, a.metric)?;
            crate::data::same_dim(&queries, qp, data.dim(), &train_path)?;
            let qrels = a.qrels.as_ref().expect("clap: requires qrels");
            let q = Qrels::load(
                qrels,
                a.doc_ids.as_ref().expect("clap: requires doc_ids"),
                a.query_ids.as_ref().expect("clap: requires query_ids"),
            )
            .with_context(|| format!("reading qrels {}", qrels.display()))?;
            let pairs = q.positive_pairs();
            if let Some(&(_, d)) = pairs.iter().find(|p| p.1 as usize >= data.len()) {
                bail!(
                    "--doc-ids maps a judged document to row {d}, but {} has {} rows",
                    train_path.display(),
                    data.len()
                );
            }
            if let Some(&(qr, _)) = pairs.iter().find(|p| p.0 as usize >= queries.len()) {
                bail!(
                    "--query-ids maps a judged query to row {qr}, but {} has {} rows",
                    qp.display(),
                    queries.len()
                );
            }
            let bytes: Vec<u8> = pairs
                .iter()
                .flat_map(|p| [p.0.to_le_bytes(), p.1.to_le_bytes()].concat())
                .collect();
            log(&format!(
                "{} pairs from {} training queries",
                pairs.len(),
                pairs
                    .iter()
                    .map(|p| p.0)
                    .collect::<std::collections::HashSet<_>>()
                    .len()
            ));
            (Supervision::Pairs { queries, pairs }, bytes)
        }
        (None, None) => (Supervision::Neighbours, vec![]),
    };
    let d = TrainConfig::default();
    let cfg = TrainConfig {
        dim: a.dim,
        hidden: a.hidden,
        epochs: a.epochs,
        batch: a.batch,
        lr: a.lr.unwrap_or_else(|| rewa_train::default_lr(a.init)),
        weight_decay: a.weight_decay,
        temperature: a.temperature,
        learn_temperature: !a.fixed_temperature,
        distill: Some(
            a.distill
                .unwrap_or_else(|| rewa_train::default_distill(&sup)),
        ),
        teacher_temperature: a.teacher_temperature,
        neighbours: a.neighbours,
        group: a.group,
        dropout: a.dropout,
        input_noise: a.input_noise,
        augment: a.augment,
        val_fraction: a.val_fraction,
        patience: a.patience,
        qat: a.qat,
        init: a.init,
        seed: a.seed,
        ..d
    };
    rewa_train::validate(data.view(), &sup, &cfg)?;
    let fp = fingerprint(data.view(), &extra_fp);
    log(&format!(
        "training {} -> {} ({}, {}) on {} vectors, {fp}",
        data.dim(),
        a.dim,
        sup.name(),
        a.metric,
        data.len()
    ));
    let pb = ProgressBar::new(0).with_style(
        ProgressStyle::with_template("{msg} {bar:30} {pos}/{len} steps ({per_sec}, eta {eta})")
            .expect("valid template"),
    );
    let mut bar = Bar { pb };
    let rec = record(&cfg, sup.name(), a.metric, &fp);
    let mut run = RunDir::create(&a.out, a.force, rec, &mut bar)?;
    let out = rewa_train::train(data.view(), &sup, &cfg, a.metric, &mut run)?;
    let trained = out.log.iter().filter(|e| e.epoch > 0).count();
    let summary = json!({
        "best_epoch": out.best_epoch,
        "epochs_run": trained,
        "stopped_early": out.stopped_early,
        "seconds": out.seconds,
        "n_train": out.n_train,
        "n_val": out.n_val,
    });
    run.finish_with(
        &out.model,
        summary.clone(),
        out.quantizer.as_ref().map(|(s, q)| (*s, q)),
    )?;
    drop(run);
    bar.pb.finish_and_clear();
    let best = out
        .log
        .iter()
        .find(|e| e.epoch == out.best_epoch)
        .expect("invariant: the best epoch is in the log");
    let train_secs: f64 = out.log.iter().map(|e| e.train_seconds).sum();
    log(&format!(
        "best epoch {} of {} ({}): {} {:.4}; val recall@10 {:.3}, train recall@10 {:.3}; {:.1}s ({:.1}s/epoch training); model in {}",
        out.best_epoch,
        trained,
        if out.stopped_early { "stopped early" } else { "ran all epochs" },
        out.score_name,
        best.score,
        best.val_recall,
        best.train_recall,
        out.seconds,
        train_secs / trained.max(1) as f64,
        a.out.display()
    ));
    if a.json {
        let mut j = summary;
        j["out"] = json!(a.out);
        j["score_name"] = json!(out.score_name);
        j["best"] = serde_json::to_value(best)?;
        j["seconds_per_epoch"] = json!(train_secs / out.log.len() as f64);
        println!("{}", serde_json::to_string(&j)?);
    }
    Ok(())
}
