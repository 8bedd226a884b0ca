//! The run directory `rewa train --out DIR` writes, kept complete at every epoch end so an
//! interrupted run leaves its best model, its log and its plot:
//!
//! | file | written |
//! |---|---|
//! | `model.safetensors`, `config.json` | whenever validation improves (the best weights so far); the core crate's model format, so `learned=DIR` works at once |
//! | `log.jsonl` | one [`EpochLog`] per line, appended and flushed every epoch |
//! | `training.png` | redrawn every epoch |

use crate::train::{EpochLog, Observer, TrainConfig};
use crate::Result;
use rewa::encode::LearnedTransform;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Log file name.
pub const LOG_FILE: &str = "log.jsonl";
/// Plot file name.
pub const PLOT_FILE: &str = "training.png";

/// Writes a run's artifacts as epochs end; wraps another observer (e.g. a progress bar).
pub struct RunDir<'a> {
    dir: PathBuf,
    /// Stored in `config.json` under `training`, with `best_epoch` filled in as it changes.
    record: serde_json::Value,
    log: Vec<EpochLog>,
    inner: &'a mut dyn Observer,
}

impl<'a> RunDir<'a> {
    /// Creates `dir` (if needed) and truncates its log. `record` describes the run.
    pub fn create(
        dir: &Path,
        record: serde_json::Value,
        inner: &'a mut dyn Observer,
    ) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| rewa::Error::Io {
            path: dir.into(),
            source: e,
        })?;
        let lp = dir.join(LOG_FILE);
        std::fs::write(&lp, b"").map_err(|e| rewa::Error::Io {
            path: lp.clone(),
            source: e,
        })?;
        Ok(RunDir {
            dir: dir.into(),
            record,
            log: Vec::new(),
            inner,
        })
    }

    /// Saves the final (best) model with the finished run's record.
    pub fn finish(&mut self, model: &LearnedTransform, extra: serde_json::Value) -> Result<()> {
        if let (Some(r), serde_json::Value::Object(e)) = (self.record.as_object_mut(), extra) {
            r.extend(e);
        }
        model.save(&self.dir, self.record.clone())?;
        Ok(())
    }
}

impl Observer for RunDir<'_> {
    fn step(&mut self, epoch: usize, step: usize, steps: usize, loss: f64) {
        self.inner.step(epoch, step, steps, loss);
    }

    fn epoch(&mut self, log: &EpochLog, model: &LearnedTransform, best: bool) -> Result<()> {
        let lp = self.dir.join(LOG_FILE);
        let io = |e| rewa::Error::Io {
            path: lp.clone(),
            source: e,
        };
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&lp)
            .map_err(io)?;
        let line = serde_json::to_string(log).expect("invariant: log serialises");
        writeln!(f, "{line}").map_err(io)?;
        f.sync_data().map_err(io)?;
        self.log.push(log.clone());
        if best {
            if let Some(r) = self.record.as_object_mut() {
                r.insert("best_epoch".into(), log.epoch.into());
                r.insert("best_score".into(), serde_json::json!(log.score));
            }
            model.save(&self.dir, self.record.clone())?;
        }
        crate::plot::draw(&self.dir.join(PLOT_FILE), &self.log)?;
        self.inner.epoch(log, model, best)
    }
}

/// The `training` record of `config.json`: hyper-parameters, supervision, metric, seed and
/// a fingerprint of the training data.
pub fn record(
    cfg: &TrainConfig,
    supervision: &str,
    metric: rewa::Metric,
    fingerprint: &str,
) -> serde_json::Value {
    serde_json::json!({
        "config": cfg,
        "supervision": supervision,
        "metric": metric.to_string(),
        "data_fingerprint": fingerprint,
        "architecture": "Linear(d,h) -> LayerNorm -> GELU -> Dropout -> Linear(h,m) -> LayerNorm -> L2 normalise",
        "rewa_version": env!("CARGO_PKG_VERSION"),
    })
}

/// `n x d` and a CRC-32 of the vectors' bytes (and of the labels / pairs, when given).
pub fn fingerprint(x: rewa::VectorsRef<'_>, extra: &[u8]) -> String {
    let mut h = crc32fast::Hasher::new();
    let mut bytes = Vec::with_capacity(4 * x.dim());
    for r in x.rows() {
        bytes.clear();
        bytes.extend(r.iter().flat_map(|v| v.to_le_bytes()));
        h.update(&bytes);
    }
    h.update(extra);
    format!("{}x{} crc32 {:08x}", x.len(), x.dim(), h.finalize())
}
