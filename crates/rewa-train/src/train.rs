//! The training loop: batches of anchors and positives, one soft cross-entropy over the
//! batch's similarity matrix, AdamW with cosine annealing and gradient clipping, a held-out
//! validation split measured every epoch, early stopping on it, best weights kept.
//!
//! **The loss.** A batch holds `2b` inputs: `b` anchors and one positive for each. The
//! student logits are `s * Z Zᵀ` (`Z` the unit-norm outputs, `s = 1/temperature`, learnable
//! by default), the diagonal masked. Each row `i` gets a target distribution `T_i` and the
//! loss is `-Σ_j T_ij log softmax(logits_i)_j`, averaged over rows:
//!
//! * labels: `T_i` uniform over the other inputs of `i`'s class (supervised contrastive; a
//!   plain InfoNCE would push same-class inputs of the batch apart);
//! * pairs: a query's row is uniform over its relevant documents in the batch, and a
//!   document's row over the queries it is relevant to;
//! * neighbours (self-supervised): `T_i` is one-hot on `i`'s partner, drawn from its exact
//!   `k` nearest neighbours (InfoNCE);
//!
//! plus, with weight `distill`, the teacher distribution `softmax(S_full / teacher_temp)` of
//! the same batch in the full space (ranking distillation). Both terms are cross-entropies
//! against fixed targets, so they add into one target matrix. With `qat` the loss is also
//! taken on the quantized outputs and the two are summed: for `sign` (Hamming) on both sides
//! quantized; for asymmetric codes (`asign`, `int8`, `rabitq<bits>`, `pq<m>`) on logits
//! `s Z Hᵀ`, the float outputs against the documents as the index will score them (see
//! [`Qat`]); `pq<m>` adds `|sg(z) - h|² + 0.25 |z - sg(h)|²` (codebook and commitment terms).

use crate::model::{fake_document, fake_quantize, Mlp, Qat};
use crate::optim::AdamW;
use crate::{Error, Result};
use candle_core::{Device, Tensor, Var};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use rewa::encode::{AnyQuantizer, LearnedTransform, QuantizerSpec, Transform};
use rewa::eval::{drop_self, Qrels};
use rewa::search::{exact_search, scan_encoded, Allow, Hit};
use rewa::{Encoder, Metric, Vectors, VectorsRef};
use std::collections::{HashMap, HashSet};
use std::time::Instant;

/// What makes two inputs similar.
#[derive(Clone, Debug)]
pub enum Supervision {
    /// Each training vector's exact nearest neighbours in the full space.
    Neighbours,
    /// One label per base row; same label = positive.
    Labels(Vec<i64>),
    /// Query vectors and `(query row, base row)` relevance pairs.
    Pairs {
        /// Query vectors (same dimension as the base).
        queries: Vectors,
        /// `(query row, base row)`.
        pairs: Vec<(u32, u32)>,
    },
}

impl Supervision {
    /// `neighbours`, `labels` or `pairs`.
    pub fn name(&self) -> &'static str {
        match self {
            Supervision::Neighbours => "neighbours",
            Supervision::Labels(_) => "labels",
            Supervision::Pairs { .. } => "pairs",
        }
    }
}

/// How the network's weights start.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Init {
    /// PyTorch's `Linear` default (uniform in `+-1/sqrt(fan_in)`), seeded.
    Random,
    /// The PCA projection of the training part ([`Mlp::init_from_projection`]): training
    /// starts from the baseline it has to beat. Needs `hidden >= 2 * dim`.
    Pca,
}

impl std::str::FromStr for Init {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "random" => Ok(Init::Random),
            "pca" => Ok(Init::Pca),
            _ => Err(format!("unknown init {s:?} (random or pca)")),
        }
    }
}

/// Hyper-parameters; every field has a default (see `Default`).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Output dimension `m`.
    pub dim: usize,
    /// Hidden width; `None` = `2 * dim`. At most [`MAX_HIDDEN`].
    pub hidden: Option<usize>,
    /// Maximum epochs (one epoch = as many inputs as there are training vectors).
    pub epochs: usize,
    /// Inputs per batch (anchors plus positives). At most [`MAX_BATCH`].
    pub batch: usize,
    /// Peak learning rate (AdamW), annealed by a cosine to 1% of it over `epochs`.
    pub lr: f64,
    /// AdamW weight decay.
    pub weight_decay: f64,
    /// Initial student temperature.
    pub temperature: f64,
    /// Learn the temperature (as a log-scale parameter) instead of fixing it.
    pub learn_temperature: bool,
    /// Weight of the ranking-distillation term (teacher = the full space); `None` =
    /// [`default_distill`] of the supervision.
    pub distill: Option<f64>,
    /// Teacher temperature of the distillation term.
    pub teacher_temperature: f64,
    /// Positives per vector in the neighbours setting are drawn from its `neighbours` nearest.
    pub neighbours: usize,
    /// Positives drawn per anchor (a batch is `batch / (1 + group)` anchors and their
    /// positives), so the batch holds whole neighbourhoods whose order the distillation term
    /// must keep.
    pub group: usize,
    /// Dropout after the GELU.
    pub dropout: f32,
    /// Standard deviation of Gaussian noise added to inputs (inputs of unit norm have
    /// per-coordinate scale about `1/sqrt(d)`).
    pub input_noise: f32,
    /// Standard deviation of Gaussian noise added to each batch's inputs *before* both the
    /// teacher and the student see them (re-normalised for cosine): every epoch trains on
    /// fresh points, which the network cannot memorise. `input_noise`, by contrast, perturbs
    /// only the student's input.
    pub augment: f32,
    /// Share of the training vectors (of the queries, for pairs) held out for validation. It
    /// must hold at least [`MIN_PART_ROWS`] vectors (one query, for pairs): the validation
    /// score chooses the best epoch and stops training.
    pub val_fraction: f64,
    /// Stop after this many epochs without a better validation score.
    pub patience: usize,
    /// Global gradient-norm clip.
    pub clip: f64,
    /// Quantization-aware training.
    pub qat: Option<Qat>,
    /// Starting weights.
    pub init: Init,
    /// Layer-norm epsilon.
    pub ln_eps: f64,
    /// Queries sampled per part for the per-epoch recall.
    pub eval_queries: usize,
    /// Largest base the per-epoch recall searches.
    pub eval_base: usize,
    /// Seed of initialisation, split, shuffling, dropout and noise.
    pub seed: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            dim: 256,
            hidden: None,
            epochs: 60,
            batch: 512,
            lr: 3e-3,
            weight_decay: 0.01,
            temperature: 0.05,
            learn_temperature: true,
            distill: None,
            teacher_temperature: 0.05,
            neighbours: 10,
            group: 1,
            dropout: 0.0,
            input_noise: 0.0,
            augment: 0.0,
            val_fraction: 0.1,
            patience: 8,
            clip: 1.0,
            qat: None,
            init: Init::Random,
            ln_eps: 1e-5,
            eval_queries: 1000,
            eval_base: 10_000,
            seed: 42,
        }
    }
}

impl TrainConfig {
    /// The hidden width: `hidden`, or `2 * dim` when unset.
    pub fn hidden_width(&self) -> usize {
        self.hidden.unwrap_or(self.dim.saturating_mul(2))
    }
}

/// One line of the training log.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct EpochLog {
    /// 1-based; 0 is the untrained start, logged only for `Init::Pca`.
    pub epoch: usize,
    /// Learning rate at the epoch's last step.
    pub lr: f64,
    /// Student temperature at the end of the epoch.
    pub temperature: f64,
    /// Mean training loss over the epoch's steps.
    pub train_loss: f64,
    /// Loss on validation batches (no dropout or noise).
    pub val_loss: f64,
    /// recall@10 vs exact search in the full space, queries and base from the training part.
    pub train_recall: f64,
    /// The same on the validation part (never trained on).
    pub val_recall: f64,
    /// Label precision@10 on the validation part (labels only).
    pub val_label_precision: Option<f64>,
    /// recall@10 of relevant documents for validation queries (pairs only).
    pub val_qrels_recall: Option<f64>,
    /// `val_recall` measured on the quantized codes (with `qat`).
    pub val_recall_quantized: Option<f64>,
    /// The score early stopping watches.
    pub score: f64,
    /// Seconds spent training this epoch (without evaluation).
    pub train_seconds: f64,
    /// Seconds spent evaluating this epoch.
    pub eval_seconds: f64,
}

/// What [`train`] returns.
pub struct TrainOutcome {
    /// The best epoch's weights.
    pub model: LearnedTransform,
    /// The quantizer trained with it (`qat` of `pq<m>` or `rabitq<bits>`), to keep in the
    /// model directory.
    pub quantizer: Option<(QuantizerSpec, AnyQuantizer)>,
    /// Every epoch.
    pub log: Vec<EpochLog>,
    /// 1-based epoch of `model`.
    pub best_epoch: usize,
    /// Stopped before `epochs` because validation stopped improving.
    pub stopped_early: bool,
    /// Wall time of the whole run.
    pub seconds: f64,
    /// Training rows and validation rows (queries, for pairs).
    pub n_train: usize,
    /// See `n_train`.
    pub n_val: usize,
    /// Name of the score early stopping watched.
    pub score_name: &'static str,
}

/// Receives progress; the CLI draws a bar and writes artifacts as epochs end.
pub trait Observer {
    /// After every optimiser step.
    fn step(&mut self, _epoch: usize, _step: usize, _steps: usize, _loss: f64) {}
    /// After every epoch, with the epoch's weights and whether they are the best so far.
    fn epoch(&mut self, _log: &EpochLog, _model: &LearnedTransform, _best: bool) -> Result<()> {
        Ok(())
    }
}

/// An observer that does nothing.
pub struct Quiet;
impl Observer for Quiet {}

/// Rows of one part (train or validation) and their positives.
struct Part {
    rows: Vec<u32>,
    /// Positives of each row, as positions into `rows`.
    partners: Vec<Vec<u32>>,
}

impl Part {
    fn new(rows: Vec<u32>) -> Part {
        Part {
            rows,
            partners: vec![],
        }
    }
}

/// Query/document pairs split by query.
struct PairSplit<'a> {
    queries: VectorsRef<'a>,
    train: Vec<(u32, u32)>,
    val: Vec<(u32, u32)>,
}

/// Fixed evaluation set of a part: base ids (the first `nq` are also the queries), their
/// vectors (gathered once, not every epoch) and the exact truth.
/// What a quantization-aware run carries between batches: the centre of the outputs (asign
/// thresholds, RaBitQ centroid) and the PQ codebooks, trained with the model.
struct QatState {
    qat: Qat,
    centroid: Vec<f32>,
    codebook: Option<Var>,
    /// RaBitQ runs: the quantizer itself (its seeded rotation; the centroid refitted every
    /// epoch), so training sees the estimator the index will use.
    rabitq: Option<rewa::encode::RabitqQuantizer>,
}

impl QatState {
    /// The quantizer trained with the model (`pq<m>`, `rabitq<bits>`), from the run's
    /// current state; `None` for those nothing is trained for (sign, asign, int8).
    fn trained(&self, dim: usize) -> Result<Option<AnyQuantizer>> {
        Ok(match self.qat {
            Qat::Pq { m } => {
                let cb = self
                    .codebook
                    .as_ref()
                    .expect("invariant: pq runs have codebooks");
                let c = cb.as_tensor().to_vec1::<f32>()?;
                Some(rewa::encode::PqQuantizer::from_parts(dim, m, c, Metric::Ip)?.into())
            }
            Qat::Rabitq { .. } => self.rabitq.clone().map(Into::into),
            _ => None,
        })
    }
    /// The quantizer the codes will be stored with: the trained one, else fitted on `out`.
    fn quantizer(&self, out: VectorsRef<'_>, seed: u64) -> Result<AnyQuantizer> {
        match self.trained(out.dim())? {
            Some(q) => Ok(q),
            None => Ok(AnyQuantizer::fit(self.qat.spec(), out, Metric::Ip, seed)?),
        }
    }
}

/// The mean of the rows of `out`.
fn mean_row(out: VectorsRef<'_>) -> Vec<f32> {
    let mut mean = vec![0f64; out.dim()];
    for r in out.rows() {
        mean.iter_mut().zip(r).for_each(|(m, v)| *m += *v as f64);
    }
    mean.iter()
        .map(|m| (m / out.len().max(1) as f64) as f32)
        .collect()
}

struct EvalSet {
    base: Vec<u32>,
    x: Vectors,
    nq: usize,
    truth: Vec<Vec<Hit>>,
}

/// The validation score early stopping watches.
#[derive(Clone, Copy)]
enum Score {
    QrelsRecall,
    LabelPrecision,
    QuantizedRecall,
    Recall,
}

impl Score {
    fn name(self) -> &'static str {
        match self {
            Score::QrelsRecall => "val_qrels_recall",
            Score::LabelPrecision => "val_label_precision",
            Score::QuantizedRecall => "val_recall_quantized",
            Score::Recall => "val_recall",
        }
    }
    fn of(self, e: &EpochLog) -> f64 {
        match self {
            Score::QrelsRecall => e.val_qrels_recall,
            Score::LabelPrecision => e.val_label_precision,
            Score::QuantizedRecall => e.val_recall_quantized,
            Score::Recall => Some(e.val_recall),
        }
        .unwrap_or(f64::NAN)
    }
}

/// The widest hidden layer `--hidden` may ask for.
pub const MAX_HIDDEN: usize = 1 << 16;
/// The largest `--batch`: the loss holds several `batch x batch` f32 matrices (targets,
/// teacher, logits and their gradients), 1 GiB each at this size.
pub const MAX_BATCH: usize = 1 << 14;
/// The most `--epochs`.
pub const MAX_EPOCHS: usize = 100_000;
/// Fewest rows in each part (training and validation) of a run: recall@10 over a part needs
/// a query and at least ten others, and early stopping needs the validation score.
pub const MIN_PART_ROWS: usize = 12;

impl TrainConfig {
    /// Checks every hyper-parameter for input dimension `d`, before anything is allocated
    /// or written: sizes against their caps ([`MAX_HIDDEN`], [`MAX_BATCH`], [`MAX_EPOCHS`]),
    /// rates and temperatures finite and positive. Messages name the CLI flag.
    pub fn check(&self, d: usize) -> Result<()> {
        let bad = |m: String| Err(Error::Rewa(rewa::Error::InvalidInput(m)));
        if self.dim == 0 || self.dim > d {
            return bad(format!(
                "--dim {} must be between 1 and the input dimension {d}",
                self.dim
            ));
        }
        let hidden = self.hidden_width();
        if !(1..=MAX_HIDDEN).contains(&hidden) {
            return bad(format!(
                "--hidden {hidden} must be between 1 and {MAX_HIDDEN}"
            ));
        }
        if self.init == Init::Pca && hidden < 2 * self.dim {
            return bad(format!(
                "--init pca needs --hidden >= 2 * --dim ({hidden} < {})",
                2 * self.dim
            ));
        }
        if self.batch > MAX_BATCH {
            return bad(format!(
                "--batch {} must be at most {MAX_BATCH} (the loss holds batch x batch matrices)",
                self.batch
            ));
        }
        let need = self.group.checked_add(1).and_then(|g| g.checked_mul(2));
        if self.group == 0 || !matches!(need, Some(need) if self.batch >= need) {
            return bad(format!(
                "--batch {} must hold at least two anchors with --group {} positives each (--batch >= 2 * (1 + --group), and --group >= 1)",
                self.batch, self.group
            ));
        }
        if !(1..=MAX_EPOCHS).contains(&self.epochs) {
            return bad(format!(
                "--epochs {} must be between 1 and {MAX_EPOCHS}",
                self.epochs
            ));
        }
        if !(0.0..0.9).contains(&self.val_fraction) {
            return bad(format!(
                "--val-fraction {} must be in [0, 0.9)",
                self.val_fraction
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(format!("--dropout {} must be in [0, 1)", self.dropout));
        }
        if !(self.input_noise >= 0.0 && self.input_noise.is_finite()) {
            return bad(format!(
                "--input-noise {} must be a finite standard deviation >= 0",
                self.input_noise
            ));
        }
        if !(self.augment >= 0.0 && self.augment.is_finite()) {
            return bad(format!(
                "--augment {} must be a finite standard deviation >= 0",
                self.augment
            ));
        }
        if let Some(w) = self.distill.filter(|w| !(w.is_finite() && *w >= 0.0)) {
            return bad(format!("--distill {w} must be a finite weight >= 0"));
        }
        let positive = [
            ("--lr", self.lr),
            ("--temperature", self.temperature),
            ("--teacher-temperature", self.teacher_temperature),
            ("clip", self.clip),
            ("ln_eps", self.ln_eps),
        ];
        if let Some((name, v)) = positive.iter().find(|(_, v)| !(v.is_finite() && *v > 0.0)) {
            return bad(format!("{name} {v} must be a finite number > 0"));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad(format!(
                "--weight-decay {} must be a finite number >= 0",
                self.weight_decay
            ));
        }
        if self.eval_queries == 0 || self.eval_base < MIN_PART_ROWS {
            return bad(format!(
                "eval_queries {} must be >= 1 and eval_base {} >= {MIN_PART_ROWS}",
                self.eval_queries, self.eval_base
            ));
        }
        Ok(())
    }
}

/// Checks a run before it starts (and before the caller writes anything): the
/// hyper-parameters ([`TrainConfig::check`]), the data (finite, at least 20 vectors), the
/// supervision (one label per vector, pairs in range), and that the split leaves both parts
/// big enough to measure ([`MIN_PART_ROWS`] vectors each; with pairs, one validation query).
/// [`train`] runs the same checks.
pub fn validate(base: VectorsRef<'_>, sup: &Supervision, cfg: &TrainConfig) -> Result<()> {
    let (n, d) = (base.len(), base.dim());
    cfg.check(d)?;
    base.check_finite()?;
    let bad = |m: String| Err(Error::Rewa(rewa::Error::InvalidInput(m)));
    match sup {
        Supervision::Labels(l) if l.len() != n => {
            return bad(format!("{} labels for {n} base vectors", l.len()));
        }
        Supervision::Pairs { queries, pairs } => {
            if queries.dim() != d {
                return Err(rewa::Error::DimMismatch {
                    expected: d,
                    got: queries.dim(),
                }
                .into());
            }
            queries.view().check_finite()?;
            if let Some(&(q, b)) = pairs
                .iter()
                .find(|&&(q, b)| q as usize >= queries.len() || b as usize >= n)
            {
                return bad(format!(
                    "pair (query {q}, base {b}) is out of range ({} queries, {n} base rows)",
                    queries.len()
                ));
            }
            if pairs.is_empty() {
                return bad("no (query, document) pairs to train on".into());
            }
        }
        _ => {}
    }
    if n < 20 {
        return bad(format!("{n} training vectors are too few (>= 20)"));
    }
    match sup {
        Supervision::Pairs { pairs, .. } => {
            let nq = pairs.iter().map(|p| p.0).collect::<HashSet<_>>().len();
            let n_val = pair_val_queries(nq, cfg.val_fraction);
            if n_val == 0 {
                return bad(format!(
                    "the validation split holds no query ({nq} judged queries x --val-fraction {}): give more training queries or a larger --val-fraction",
                    cfg.val_fraction
                ));
            }
        }
        _ => {
            let n_val = val_rows(n, cfg.val_fraction);
            if n_val < MIN_PART_ROWS {
                return bad(format!(
                    "the validation split holds {n_val} vectors ({n} x --val-fraction {}), too few to measure recall@10 and choose the best epoch (>= {MIN_PART_ROWS}): give more training vectors or a larger --val-fraction",
                    cfg.val_fraction
                ));
            }
            if n - n_val < MIN_PART_ROWS {
                return bad(format!(
                    "the training split holds {} vectors ({n} minus {n_val} held out), fewer than {MIN_PART_ROWS}: give more training vectors or a smaller --val-fraction",
                    n - n_val
                ));
            }
        }
    }
    Ok(())
}

/// Validation rows of `n` at share `fraction`.
fn val_rows(n: usize, fraction: f64) -> usize {
    (n as f64 * fraction).round() as usize
}

/// Validation queries of `nq` judged queries at share `fraction` (at least one query trains).
fn pair_val_queries(nq: usize, fraction: f64) -> usize {
    ((nq as f64 * fraction).round() as usize).min(nq.saturating_sub(1))
}

/// The distillation weight when none is given. Self-supervised: 50, because the full space's
/// ranking is the target (on SciFact, validation recall@10 at m 128 went 0.703 at weight 1 ->
/// 0.835 at 20 -> 0.838 at 50 and 100; test recall 0.678 -> 0.813). With labels or pairs: 1,
/// so the supervision is not drowned (at 50, label precision on the test data fell from
/// above 0.85 to 0.82).
pub fn default_distill(sup: &Supervision) -> f64 {
    match sup {
        Supervision::Neighbours => 50.0,
        Supervision::Labels(_) | Supervision::Pairs { .. } => 1.0,
    }
}

/// The peak learning rate when none is given: 3e-3 from a random start, 3e-4 from the PCA
/// projection, which is already a good model: at 3e-3 the first epochs undo it and training
/// never got back above it (SciFact m 128, test recall@10: 0.821 at 3e-3, where the start was
/// kept; 0.832 at 3e-4; 0.829 at 1e-4; PCA itself 0.817).
pub fn default_lr(init: Init) -> f64 {
    match init {
        Init::Random => 3e-3,
        Init::Pca => 3e-4,
    }
}

/// Batches of the per-epoch validation loss (a monitor; the validation recall, which decides
/// early stopping, uses the whole validation part up to `eval_base`).
const VAL_BATCHES: usize = 10;

/// Trains an encoder on `base` (already normalised when the metric is cosine).
pub fn train(
    base: VectorsRef<'_>,
    sup: &Supervision,
    cfg: &TrainConfig,
    metric: Metric,
    obs: &mut dyn Observer,
) -> Result<TrainOutcome> {
    let t0 = Instant::now();
    let (n, d) = (base.len(), base.dim());
    let cfg = &TrainConfig {
        distill: Some(cfg.distill.unwrap_or_else(|| default_distill(sup))),
        ..cfg.clone()
    };
    validate(base, sup, cfg)?;
    let dev = Device::Cpu;
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let mlp = Mlp::new(d, cfg.hidden_width(), cfg.dim, cfg.ln_eps, &mut rng, &dev)?;
    let log_scale = Var::from_tensor(&Tensor::new(&[(1.0 / cfg.temperature).ln() as f32], &dev)?)?;
    let mut vars = mlp.vars.clone();
    if cfg.learn_temperature {
        vars.push(log_scale.clone());
    }
    let mut opt = AdamW::new(&vars, cfg.lr, cfg.weight_decay);

    // Split. Pairs hold out queries; the others hold out base vectors.
    let mut perm: Vec<u32> = (0..n as u32).collect();
    perm.shuffle(&mut rng);
    let l2_scale = if metric == Metric::L2 {
        // twice the mean squared norm: distances of typical pairs land near cosine's scale
        let s: f64 = base
            .rows()
            .take(2000)
            .map(|r| rewa::distance::dot(r, r) as f64)
            .sum();
        (2.0 * s / base.len().min(2000) as f64).max(1e-12) as f32
    } else {
        1.0
    };
    let (mut train_part, mut val_part, pair_split) = match sup {
        Supervision::Pairs { queries, pairs } => {
            let mut qs: Vec<u32> = pairs
                .iter()
                .map(|p| p.0)
                .collect::<HashSet<_>>()
                .into_iter()
                .collect();
            qs.sort_unstable();
            qs.shuffle(&mut rng);
            let n_val = pair_val_queries(qs.len(), cfg.val_fraction);
            let val_q: HashSet<u32> = qs[..n_val].iter().copied().collect();
            let (val, train): (Vec<_>, Vec<_>) = pairs.iter().partition(|p| val_q.contains(&p.0));
            let split = PairSplit {
                queries: queries.view(),
                train,
                val,
            };
            // documents are not held out: the whole base is the training part
            (Part::new(perm), Part::new(vec![]), Some(split))
        }
        _ => {
            let (v, t) = perm.split_at(val_rows(n, cfg.val_fraction));
            (Part::new(t.to_vec()), Part::new(v.to_vec()), None)
        }
    };
    if cfg.init == Init::Pca {
        // fitted on the training part only: validation vectors stay unseen
        let x = base.gather(&train_part.rows);
        let pca = rewa::encode::PcaTransform::fit(
            &rewa::encode::PcaConfig { m: cfg.dim },
            x.view(),
            cfg.seed,
        )?;
        mlp.init_from_projection(pca.components())?;
    }
    // Positives.
    let labels = match sup {
        Supervision::Labels(l) => Some(l.as_slice()),
        _ => None,
    };
    for part in [&mut train_part, &mut val_part] {
        if part.rows.is_empty() {
            continue;
        }
        match sup {
            Supervision::Neighbours => {
                let x = base.gather(&part.rows);
                let k = cfg.neighbours.min(part.rows.len() - 1).max(1);
                let hits = drop_self(exact_search(x.view(), x.view(), metric, k + 1), k);
                part.partners = hits
                    .into_iter()
                    .map(|h| h.into_iter().map(|h| h.id).collect())
                    .collect();
            }
            Supervision::Labels(l) => {
                let mut by: HashMap<i64, Vec<u32>> = HashMap::new();
                for (i, &r) in part.rows.iter().enumerate() {
                    by.entry(l[r as usize]).or_default().push(i as u32);
                }
                part.partners = part
                    .rows
                    .iter()
                    .enumerate()
                    .map(|(i, &r)| {
                        by[&l[r as usize]]
                            .iter()
                            .copied()
                            .filter(|&j| j as usize != i)
                            .collect()
                    })
                    .collect();
            }
            Supervision::Pairs { .. } => {}
        }
    }

    // Evaluation sets, fixed for the run.
    let mut erng = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0xE7A1);
    let mut make_eval = |rows: &[u32]| -> Option<EvalSet> {
        if rows.len() < MIN_PART_ROWS {
            return None;
        }
        let mut b = rows.to_vec();
        b.shuffle(&mut erng);
        b.truncate(cfg.eval_base);
        let nq = cfg.eval_queries.min(b.len());
        let x = base.gather(&b);
        let qx = x.view().slice(0, nq).to_owned();
        let truth = drop_self(exact_search(x.view(), qx.view(), metric, 11), 10);
        Some(EvalSet {
            base: b,
            x,
            nq,
            truth,
        })
    };
    let train_eval = make_eval(&train_part.rows);
    let val_eval = make_eval(&val_part.rows);
    // Pairs: validation queries against the whole base.
    let pair_eval = pair_split.as_ref().map(|ps| {
        let mut qids: Vec<u32> = ps.val.iter().map(|p| p.0).collect();
        qids.sort_unstable();
        qids.dedup();
        let pos: HashMap<u32, usize> = qids.iter().enumerate().map(|(i, &q)| (q, i)).collect();
        let qrels = Qrels::from_pairs(ps.val.iter().map(|&(q, b)| (pos[&q], b)));
        let qx = ps.queries.gather(&qids);
        let truth = exact_search(base, qx.view(), metric, 10);
        (qx, truth, qrels)
    });
    let n_val = match &pair_eval {
        Some((qx, _, _)) => qx.len(),
        None => val_part.rows.len(),
    };

    // One epoch draws every unit once: a training pair, or a training row as an anchor.
    let (n_units, per_step, steps_per_epoch) = match &pair_split {
        Some(ps) => {
            let per = cfg.batch / 2;
            (ps.train.len(), per, ps.train.len().div_ceil(per))
        }
        None => {
            let n = train_part.rows.len();
            (n, cfg.batch / (1 + cfg.group), n.div_ceil(cfg.batch))
        }
    };
    let steps_per_epoch = steps_per_epoch.max(1);
    let total_steps = steps_per_epoch * cfg.epochs;
    let mut cursor = 0usize;
    let mut anchors: Vec<usize> = (0..n_units).collect();
    anchors.shuffle(&mut rng);

    let mut log = Vec::new();
    // the best epoch: score, epoch, weights, and the quantizer trained with them
    type Best = (f64, usize, Vec<Tensor>, Option<AnyQuantizer>);
    let mut best: Option<Best> = None;
    let mut stale = 0;
    let mut stopped_early = false;
    let mut step_global = 0usize;
    let score = match (sup, cfg.qat) {
        (Supervision::Pairs { .. }, _) => Score::QrelsRecall,
        (Supervision::Labels(_), _) => Score::LabelPrecision,
        (_, Some(_)) => Score::QuantizedRecall,
        _ => Score::Recall,
    };
    // A PCA start is evaluated as epoch 0 (no training) and competes for the best epoch, so
    // training never ends below the baseline it started from on validation.
    let first = if cfg.init == Init::Pca { 0 } else { 1 };
    let mut qstate = cfg.qat.map(|qat| QatState {
        qat,
        centroid: vec![0.0; cfg.dim],
        codebook: None,
        rabitq: None,
    });
    let mut cb_opt: Option<AdamW> = None;
    for epoch in first..=cfg.epochs {
        let te = Instant::now();
        if let Some(st) = qstate.as_mut() {
            let model = mlp.export()?;
            // today's outputs of (up to 4,096) training vectors
            let x = base.gather(&train_part.rows[..train_part.rows.len().min(4096)]);
            let out = model.apply_batch(x.view());
            st.centroid = mean_row(out.view());
            if let Qat::Rabitq { bits } = st.qat {
                // the same seed every epoch: the same rotation, the centroid of today's outputs
                st.rabitq = Some(
                    <rewa::encode::RabitqQuantizer as rewa::encode::Quantizer>::fit(
                        &rewa::encode::RabitqConfig {
                            bits,
                            metric: Metric::Ip,
                        },
                        out.view(),
                        cfg.seed,
                    )?,
                );
            }
            if let (Qat::Pq { m }, None) = (st.qat, &st.codebook) {
                // a start for the codebooks (the loss trains them): k-means, 10 iterations on the
                // current outputs of up to 16,384 training vectors
                let x = base.gather(&train_part.rows[..train_part.rows.len().min(1 << 14)]);
                let out = model.apply_batch(x.view());
                let pq = <rewa::encode::PqQuantizer as rewa::encode::Quantizer>::fit(
                    &rewa::encode::PqConfig {
                        iters: 10,
                        max_train: 1 << 14,
                        ..rewa::encode::PqConfig::new(m, Metric::Ip)
                    },
                    out.view(),
                    cfg.seed,
                )?;
                let cb = Var::from_vec(pq.centroids().to_vec(), pq.centroids().len(), &dev)?;
                cb_opt = Some(AdamW::new(std::slice::from_ref(&cb), cfg.lr, 0.0));
                st.codebook = Some(cb);
            }
        }
        let mut loss_sum = 0.0;
        let steps = if epoch == 0 { 0 } else { steps_per_epoch };
        for step in 0..steps {
            let mut idx = Vec::with_capacity(per_step);
            for _ in 0..per_step {
                if cursor == anchors.len() {
                    anchors.shuffle(&mut rng);
                    cursor = 0;
                }
                idx.push(anchors[cursor]);
                cursor += 1;
            }
            let batch = match &pair_split {
                Some(ps) => {
                    let pairs: Vec<(u32, u32)> = idx.iter().map(|&i| ps.train[i]).collect();
                    pair_batch(base, ps.queries, &pairs)
                }
                None => anchor_batch(base, &train_part, &idx, cfg.group, labels, &mut rng),
            };
            let Some(batch) = batch else { continue };
            let progress = step_global as f64 / total_steps.max(1) as f64;
            let lr = cfg.lr * (0.01 + 0.99 * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()));
            opt.lr = lr;
            let loss = batch_loss(
                &mlp,
                &log_scale,
                &batch,
                cfg,
                metric,
                l2_scale,
                Some(&mut rng),
                qstate.as_ref(),
                &dev,
            )?;
            let grads = loss.backward()?;
            opt.step(&vars, &grads, cfg.clip)?;
            if let (Some(o), Some(cb)) = (
                cb_opt.as_mut(),
                qstate.as_ref().and_then(|s| s.codebook.as_ref()),
            ) {
                o.lr = lr;
                o.step(std::slice::from_ref(cb), &grads, cfg.clip)?;
            }
            if cfg.learn_temperature {
                // keep 1/temperature in [1, 100]
                let c = log_scale.as_tensor().clamp(0f32, 100f32.ln())?;
                log_scale.set(&c)?;
            }
            let l = loss.to_scalar::<f32>()? as f64;
            if !l.is_finite() {
                return Err(Error::Diverged {
                    epoch,
                    step: step + 1,
                });
            }
            loss_sum += l;
            step_global += 1;
            obs.step(epoch, step + 1, steps_per_epoch, l);
        }
        let train_seconds = te.elapsed().as_secs_f64();
        let ev = Instant::now();
        let model = mlp.export()?;
        let train_loss = if epoch == 0 {
            f64::NAN
        } else {
            loss_sum / steps_per_epoch as f64
        };
        // Validation loss on fixed batches (at most VAL_BATCHES), no dropout or noise.
        let mut vrng = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x7A11);
        let mut vl = (0.0, 0usize);
        let val_batches: Vec<Batch> = match &pair_split {
            Some(ps) => ps
                .val
                .chunks(per_step)
                .take(VAL_BATCHES)
                .filter_map(|c| pair_batch(base, ps.queries, c))
                .collect(),
            None => {
                let all: Vec<usize> = (0..val_part.rows.len()).collect();
                all.chunks(per_step)
                    .take(VAL_BATCHES)
                    .filter_map(|c| anchor_batch(base, &val_part, c, cfg.group, labels, &mut vrng))
                    .collect()
            }
        };
        for b in &val_batches {
            let l = batch_loss(
                &mlp,
                &log_scale,
                b,
                cfg,
                metric,
                l2_scale,
                None,
                qstate.as_ref(),
                &dev,
            )?;
            vl = (vl.0 + l.to_scalar::<f32>()? as f64, vl.1 + 1);
        }
        let val_loss = if vl.1 > 0 {
            vl.0 / vl.1 as f64
        } else {
            f64::NAN
        };
        let (train_recall, _, _) = match &train_eval {
            Some(e) => eval_set(&model, e, labels, None, cfg.seed)?,
            None => (f64::NAN, None, None),
        };
        let (val_recall, val_label_precision, val_recall_quantized) = match &val_eval {
            Some(e) => eval_set(&model, e, labels, qstate.as_ref(), cfg.seed)?,
            None => (f64::NAN, None, None),
        };
        let (val_recall, val_qrels_recall) = match &pair_eval {
            Some((qx, truth, qrels)) => {
                let out = model.apply_batch(base);
                let qo = model.apply_batch(qx.view());
                let res = exact_search(out.view(), qo.view(), Metric::Ip, 10);
                let r = rewa::eval::recall_at_k(&res, truth, 10);
                (r, Some(qrels.recall_at(&res, 10)))
            }
            None => (val_recall, None),
        };
        let mut entry = EpochLog {
            epoch,
            lr: opt.lr,
            temperature: 1.0 / (log_scale.as_tensor().to_vec1::<f32>()?[0] as f64).exp(),
            train_loss,
            val_loss,
            train_recall,
            val_recall,
            val_label_precision,
            val_qrels_recall,
            val_recall_quantized,
            score: f64::NAN,
            train_seconds,
            eval_seconds: ev.elapsed().as_secs_f64(),
        };
        entry.score = score.of(&entry);
        let s = entry.score;
        // Without a validation part every epoch counts as the best.
        let improved = match &best {
            None => true,
            Some((b, _, _, _)) => s.is_nan() || s > b + 1e-4,
        };
        if improved {
            let kept = match &qstate {
                Some(st) => st.trained(cfg.dim)?,
                None => None,
            };
            best = Some((
                if s.is_nan() { f64::MIN } else { s },
                epoch,
                mlp.snapshot()?,
                kept,
            ));
            stale = 0;
        } else {
            stale += 1;
        }
        obs.epoch(&entry, &model, improved)?;
        log.push(entry);
        if stale >= cfg.patience && epoch < cfg.epochs {
            stopped_early = true;
            break;
        }
    }
    let (_, best_epoch, snap, kept) = best.expect("invariant: at least one epoch ran");
    mlp.restore(&snap)?;
    let model = mlp.export()?;
    let quantizer = kept.zip(cfg.qat).map(|(q, qat)| (qat.spec(), q));
    Ok(TrainOutcome {
        quantizer,
        model,
        log,
        best_epoch,
        stopped_early,
        seconds: t0.elapsed().as_secs_f64(),
        n_train: n_units,
        n_val,
        score_name: score.name(),
    })
}

/// recall@10 (and label precision, quantized recall) of the model on a fixed set.
fn eval_set(
    model: &LearnedTransform,
    e: &EvalSet,
    labels: Option<&[i64]>,
    qat: Option<&QatState>,
    seed: u64,
) -> Result<(f64, Option<f64>, Option<f64>)> {
    let out = model.apply_batch(e.x.view());
    let nq = e.nq;
    let qo = out.view().slice(0, nq).to_owned();
    let res = drop_self(exact_search(out.view(), qo.view(), Metric::Ip, 11), 10);
    let recall = rewa::eval::recall_at_k(&res, &e.truth, 10);
    let lp = labels.map(|l| {
        let bl: Vec<i64> = e.base.iter().map(|&r| l[r as usize]).collect();
        rewa::eval::label_precision_at_k(&res, &bl[..nq], &bl, 10, None)
    });
    let rq = match qat {
        None => None,
        Some(st) => {
            let spec = rewa::EncoderSpec {
                ivf: None,
                residual: false,
                transforms: vec![],
                quantizer: st.qat.spec(),
            };
            let q = st.quantizer(out.view(), seed)?;
            let enc = Encoder::from_parts(spec, out.dim(), None, vec![], q)?;
            let codes = enc.encode_batch(out.view())?;
            let r = drop_self(scan_encoded(&enc, &codes, qo.view(), 11, Allow::ALL), 10);
            Some(rewa::eval::recall_at_k(&r, &e.truth, 10))
        }
    };
    Ok((recall, lp, rq))
}

/// A batch: inputs (rows x d), the supervised target rows (rows x rows, row-normalised).
struct Batch {
    x: Vec<f32>,
    rows: usize,
    dim: usize,
    targets: Vec<f32>,
}

/// Anchors `idx` (positions in `part.rows`), then `group` distinct random partners of each.
fn anchor_batch(
    base: VectorsRef<'_>,
    part: &Part,
    idx: &[usize],
    group: usize,
    labels: Option<&[i64]>,
    rng: &mut ChaCha8Rng,
) -> Option<Batch> {
    let mut rows: Vec<u32> = Vec::with_capacity((1 + group) * idx.len());
    let mut groups: Vec<Vec<u32>> = Vec::with_capacity(idx.len());
    for &i in idx {
        let p = &part.partners[i];
        if p.is_empty() {
            continue;
        }
        rows.push(part.rows[i]);
        let g: Vec<u32> = rand::seq::index::sample(rng, p.len(), group.min(p.len()))
            .into_iter()
            .map(|j| part.rows[p[j] as usize])
            .collect();
        groups.push(g);
    }
    let b = rows.len();
    if b < 2 {
        return None;
    }
    // (anchor position, partner position) pairs
    let mut links = Vec::new();
    for (a, g) in groups.iter().enumerate() {
        for &r in g {
            links.push((a, rows.len()));
            rows.push(r);
        }
    }
    let n = rows.len();
    let mut t = vec![0f32; n * n];
    match labels {
        Some(l) => {
            for i in 0..n {
                for j in 0..n {
                    if j != i && l[rows[j] as usize] == l[rows[i] as usize] {
                        t[i * n + j] = 1.0;
                    }
                }
            }
        }
        None => {
            for &(a, p) in &links {
                t[a * n + p] = 1.0;
                t[p * n + a] = 1.0;
            }
        }
    }
    normalize_rows(&mut t, n);
    let x = base.gather(&rows).into_vec();
    Some(Batch {
        x,
        rows: n,
        dim: base.dim(),
        targets: t,
    })
}

/// Queries then documents of `pairs`; each query's targets are its relevant documents in the
/// batch and each document's the queries it is relevant to.
fn pair_batch(
    base: VectorsRef<'_>,
    queries: VectorsRef<'_>,
    pairs: &[(u32, u32)],
) -> Option<Batch> {
    let b = pairs.len();
    if b < 2 {
        return None;
    }
    let n = 2 * b;
    let d = base.dim();
    let mut x = Vec::with_capacity(n * d);
    for &(q, _) in pairs {
        x.extend_from_slice(queries.row(q as usize));
    }
    for &(_, doc) in pairs {
        x.extend_from_slice(base.row(doc as usize));
    }
    // doc j is relevant to query i when some pair of the batch says so
    let judged: HashSet<(u32, u32)> = pairs.iter().copied().collect();
    let mut t = vec![0f32; n * n];
    for (i, &(qi, _)) in pairs.iter().enumerate() {
        for (j, &(_, dj)) in pairs.iter().enumerate() {
            if judged.contains(&(qi, dj)) {
                t[i * n + b + j] = 1.0;
                t[(b + j) * n + i] = 1.0;
            }
        }
    }
    normalize_rows(&mut t, n);
    Some(Batch {
        x,
        rows: n,
        dim: d,
        targets: t,
    })
}

/// Scales each non-zero row of the `n`-wide matrix `t` to sum 1.
fn normalize_rows(t: &mut [f32], n: usize) {
    for row in t.chunks_exact_mut(n) {
        let s: f32 = row.iter().sum();
        if s > 0.0 {
            row.iter_mut().for_each(|v| *v /= s);
        }
    }
}

/// The soft cross-entropy of one batch (see the module docs). `rng` set = training mode.
#[allow(clippy::too_many_arguments)]
fn batch_loss(
    mlp: &Mlp,
    log_scale: &Var,
    b: &Batch,
    cfg: &TrainConfig,
    metric: Metric,
    l2_scale: f32,
    mut rng: Option<&mut ChaCha8Rng>,
    qat: Option<&QatState>,
    dev: &Device,
) -> Result<Tensor> {
    let n = b.rows;
    let augmented: Option<Vec<f32>> = match rng.as_deref_mut() {
        Some(r) if cfg.augment > 0.0 => {
            use rand_distr::{Distribution, StandardNormal};
            let mut x = b.x.clone();
            for v in x.iter_mut() {
                let z: f32 = StandardNormal.sample(r);
                *v += cfg.augment * z;
            }
            if metric.normalizes() {
                x.chunks_exact_mut(b.dim).for_each(rewa::normalize);
            }
            Some(x)
        }
        _ => None,
    };
    let xs: &[f32] = augmented.as_deref().unwrap_or(&b.x);
    let mut targets = b.targets.clone();
    let distill = cfg.distill.unwrap_or(0.0);
    if distill > 0.0 {
        // teacher: the softmax of the full-space similarities, diagonal left out
        let mut g = crate::ops::par_gram(xs, n, b.dim);
        let diag: Vec<f32> = (0..n).map(|i| g[i * n + i]).collect();
        let inv_t = 1.0 / cfg.teacher_temperature as f32;
        let w = distill as f32;
        targets
            .par_chunks_mut(n)
            .zip(g.par_chunks_mut(n))
            .enumerate()
            .for_each(|(i, (t, row))| {
                for (j, v) in row.iter_mut().enumerate() {
                    *v = if i == j {
                        f32::NEG_INFINITY
                    } else if metric == Metric::L2 {
                        -(diag[i] + diag[j] - 2.0 * *v) / l2_scale * inv_t
                    } else {
                        *v * inv_t
                    };
                }
                let mx = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut s = 0f32;
                for v in row.iter_mut() {
                    *v = (*v - mx).exp();
                    s += *v;
                }
                for (t, e) in t.iter_mut().zip(row.iter()) {
                    *t += w * e / s;
                }
            });
    }
    let x = Tensor::from_slice(xs, (n, b.dim), dev)?;
    let train = rng.map(|r| (r, cfg.input_noise, cfg.dropout));
    let z = mlp.forward(&x, train)?;
    let one = |z: &Tensor| -> Result<Tensor> {
        Ok(crate::ops::similarity_cross_entropy(
            z,
            log_scale.as_tensor(),
            targets.clone(),
        )?)
    };
    let loss = one(&z)?;
    // the float outputs (queries) against the documents as the index scores them
    let asym = |h: &Tensor| -> Result<Tensor> {
        Ok(crate::ops::asymmetric_cross_entropy(
            &z,
            h,
            log_scale.as_tensor(),
            targets.clone(),
        )?)
    };
    match (cfg.qat, qat) {
        (None, _) | (Some(_), None) => Ok(loss),
        (Some(Qat::Sign), _) => Ok((loss + one(&fake_quantize(&z)?)?)?),
        (Some(Qat::Pq { m }), Some(st)) => {
            let cb = st
                .codebook
                .as_ref()
                .expect("invariant: pq runs have codebooks");
            let h = pq_documents(&z, cb, m)?;
            let codebook = (z.detach() - &h)?.sqr()?.sum(1)?.mean_all()?;
            let commit = (&z - h.detach())?.sqr()?.sum(1)?.mean_all()?;
            Ok((((loss + asym(&h)?)? + codebook)? + (commit * 0.25)?)?)
        }
        (Some(Qat::Rabitq { .. }), Some(st)) => {
            let rq = st
                .rabitq
                .as_ref()
                .expect("invariant: rabitq runs carry their quantizer");
            Ok((loss + asym(&rabitq_documents(&z, rq)?)?)?)
        }
        (Some(q), Some(st)) => Ok((loss + asym(&fake_document(&z, q, &st.centroid)?)?)?),
    }
}

/// Each row of `z` replaced by its nearest centroids in the codebooks `cb` (`pq<m>` layout,
/// [`rewa::encode::PqQuantizer::centroids`]): a gather, so the loss reaches the codebooks.
fn pq_documents(z: &Tensor, cb: &Var, m: usize) -> Result<Tensor> {
    let (n, d) = z.dims2()?;
    let pq =
        rewa::encode::PqQuantizer::from_parts(d, m, cb.as_tensor().to_vec1::<f32>()?, Metric::L2)?;
    let codes = encode_rows(&pq, z)?;
    let mut idx = vec![0u32; n * d];
    for (row, code) in idx.chunks_exact_mut(d).zip(codes.chunks_exact(m)) {
        pq.decode_positions(code, row);
    }
    let idx = Tensor::from_vec(idx, n * d, z.device())?;
    Ok(cb.as_tensor().index_select(&idx, 0)?.reshape((n, d))?)
}

/// Each row of `z` replaced by the vector RaBitQ's estimator scores it as (`rq`'s code of it,
/// [`rewa::encode::RabitqQuantizer::estimator_vectors`]), straight-through to `z`.
fn rabitq_documents(z: &Tensor, rq: &rewa::encode::RabitqQuantizer) -> Result<Tensor> {
    let (n, d) = z.dims2()?;
    let h = rq.estimator_vectors(&encode_rows(rq, z)?);
    let hard = Tensor::from_vec(h, (n, d), z.device())?;
    Ok((z + (hard - z)?.detach())?)
}

/// The codes of the rows of `z` (n x d), one parallel task per thread: each task's encoder
/// runs its matrix products over all its rows (64-row tasks repacked the centroid blocks for
/// every 64 rows: about 1 s of a 69 s `--qat pq32` run).
fn encode_rows<Q: rewa::encode::Quantizer>(q: &Q, z: &Tensor) -> Result<Vec<u8>> {
    let (n, d) = z.dims2()?;
    let zv = z.flatten_all()?.to_vec1::<f32>()?;
    let cl = q.code_len();
    let mut codes = vec![0u8; n * cl];
    let rows = n.div_ceil(rayon::current_num_threads()).max(64);
    codes
        .par_chunks_mut(rows * cl)
        .zip(zv.par_chunks(rows * d))
        .for_each(|(c, x)| {
            q.encode_batch(VectorsRef::new(d, x).expect("invariant: whole rows"), c)
        });
    Ok(codes)
}
