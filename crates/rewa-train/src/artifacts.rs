//! The run directory `rewa train --out DIR` writes:
//!
//! | file | written |
//! |---|---|
//! | `model.safetensors`, `config.json` | whenever validation improves (the best weights so far); the core crate's model format, so `learned=DIR` works at once |
//! | `log.jsonl` | one [`EpochLog`] per line, appended and flushed every epoch |
//! | `training.png` | redrawn every epoch |
//!
//! A run writes into a temporary sibling, `.DIR.partial-<pid>`, kept complete at every epoch
//! end, and becomes `DIR` only when it finishes: a run that fails (diverges, bad input)
//! leaves `DIR` as it was and removes its partial directory; a killed run leaves the partial
//! directory with its best model, log and plot. An existing non-empty `DIR` is refused unless
//! `force` is given; then it is replaced only once the new run has finished.

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
    /// Where the finished run goes.
    dir: PathBuf,
    /// Where the run writes until it finishes.
    tmp: PathBuf,
    force: bool,
    /// Set once `tmp` has become `dir`.
    done: bool,
    /// Stored in `config.json` under `training`, with `best_epoch` filled in as it changes.
    record: serde_json::Value,
    log: Vec<EpochLog>,
    inner: &'a mut dyn Observer,
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> crate::Error + '_ {
    move |e| {
        rewa::Error::Io {
            path: path.into(),
            source: e,
        }
        .into()
    }
}

fn invalid(msg: String) -> crate::Error {
    rewa::Error::InvalidInput(msg).into()
}

/// Whether `dir` is a directory holding at least one entry.
fn has_entries(dir: &Path) -> Result<bool> {
    Ok(std::fs::read_dir(dir)
        .map_err(io_err(dir))?
        .next()
        .is_some())
}

/// Checks that a run may write to `dir`: it is missing, an empty directory, or (with
/// `force`) any directory. Returns the directory to use: `dir`, or the directory a symlink
/// `dir` points to (so the link is kept).
pub fn check_out_dir(dir: &Path, force: bool) -> Result<PathBuf> {
    let meta = match std::fs::symlink_metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if dir.file_name().is_none() {
                return Err(invalid(format!(
                    "--out {}: must name a directory (not . or ..)",
                    dir.display()
                )));
            }
            return Ok(dir.into());
        }
        Err(e) => return Err(io_err(dir)(e)),
    };
    let dir = if meta.file_type().is_symlink() {
        std::fs::canonicalize(dir).map_err(io_err(dir))?
    } else {
        dir.to_path_buf()
    };
    if !dir.is_dir() {
        return Err(invalid(format!(
            "--out {}: exists and is not a directory",
            dir.display()
        )));
    }
    if dir.file_name().is_none() {
        return Err(invalid(format!(
            "--out {}: must name a directory (not . or ..)",
            dir.display()
        )));
    }
    if !force && has_entries(&dir)? {
        return Err(invalid(format!(
            "--out {} already holds files (a trained model?); pass --force to replace it once the new run succeeds, or choose another --out",
            dir.display()
        )));
    }
    Ok(dir)
}

impl<'a> RunDir<'a> {
    /// Checks `dir` ([`check_out_dir`]) and creates the run's temporary sibling directory.
    /// `record` describes the run.
    pub fn create(
        dir: &Path,
        force: bool,
        record: serde_json::Value,
        inner: &'a mut dyn Observer,
    ) -> Result<Self> {
        let dir = check_out_dir(dir, force)?;
        let name = dir
            .file_name()
            .expect("invariant: check_out_dir refuses paths without a name")
            .to_string_lossy()
            .into_owned();
        let parent = match dir.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&parent).map_err(io_err(&parent))?;
        let tmp = parent.join(format!(".{name}.partial-{}", std::process::id()));
        if tmp.exists() {
            // left by a killed run that had this process id
            std::fs::remove_dir_all(&tmp).map_err(io_err(&tmp))?;
        }
        std::fs::create_dir(&tmp).map_err(io_err(&tmp))?;
        Ok(RunDir {
            dir,
            tmp,
            force,
            done: false,
            record,
            log: Vec::new(),
            inner,
        })
    }

    /// Saves the final (best) model with the finished run's record, then moves the run into
    /// place (replacing an old run only now, with `force`).
    pub fn finish(&mut self, model: &LearnedTransform, extra: serde_json::Value) -> Result<()> {
        self.finish_with(model, extra, None)
    }

    /// [`RunDir::finish`], keeping the quantizer trained with the model beside it.
    pub fn finish_with(
        &mut self,
        model: &LearnedTransform,
        extra: serde_json::Value,
        quantizer: Option<(rewa::encode::QuantizerSpec, &rewa::encode::AnyQuantizer)>,
    ) -> Result<()> {
        if let (Some(r), serde_json::Value::Object(e)) = (self.record.as_object_mut(), extra) {
            r.extend(e);
        }
        model.save_with(&self.tmp, self.record.clone(), quantizer)?;
        self.commit()
    }

    /// Renames the temporary directory to `dir`.
    fn commit(&mut self) -> Result<()> {
        let (dir, tmp) = (&self.dir, &self.tmp);
        if dir.is_dir() && has_entries(dir)? {
            if !self.force {
                return Err(invalid(format!(
                    "--out {} was filled while training; the run is in {}",
                    dir.display(),
                    tmp.display()
                )));
            }
            // Two renames: POSIX cannot rename a directory over a non-empty one.
            let old = tmp.with_file_name(
                tmp.file_name()
                    .expect("invariant: tmp has a name")
                    .to_string_lossy()
                    .replace(".partial-", ".old-"),
            );
            std::fs::rename(dir, &old).map_err(io_err(dir))?;
            if let Err(e) = std::fs::rename(tmp, dir) {
                let _ = std::fs::rename(&old, dir);
                return Err(io_err(dir)(e));
            }
            self.done = true;
            std::fs::remove_dir_all(&old).map_err(io_err(&old))?;
        } else {
            if dir.is_dir() {
                std::fs::remove_dir(dir).map_err(io_err(dir))?;
            }
            std::fs::rename(tmp, dir).map_err(io_err(dir))?;
            self.done = true;
        }
        Ok(())
    }

    /// Where the finished run goes.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for RunDir<'_> {
    /// A run that did not finish leaves nothing behind.
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_dir_all(&self.tmp);
        }
    }
}

impl Observer for RunDir<'_> {
    fn step(&mut self, epoch: usize, step: usize, steps: usize, loss: f64) {
        self.inner.step(epoch, step, steps, loss);
    }

    fn epoch(&mut self, log: &EpochLog, model: &LearnedTransform, best: bool) -> Result<()> {
        let lp = self.tmp.join(LOG_FILE);
        let io = |e| rewa::Error::Io {
            path: lp.clone(),
            source: e,
        };
        let mut f = std::fs::OpenOptions::new()
            .create(true)
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
            model.save(&self.tmp, self.record.clone())?;
        }
        crate::plot::draw(&self.tmp.join(PLOT_FILE), &self.log)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::Quiet;

    fn model() -> LearnedTransform {
        let t: [Vec<f32>; 8] = [
            vec![0.5; 6 * 4],
            vec![0.0; 6],
            vec![1.0; 6],
            vec![0.0; 6],
            vec![0.25; 2 * 6],
            vec![0.0; 2],
            vec![1.0; 2],
            vec![0.0; 2],
        ];
        LearnedTransform::from_tensors(4, 6, 2, 1e-5, t).unwrap()
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn runs_land_only_when_finished_and_replace_only_with_force() {
        let t = tempfile::tempdir().unwrap();
        let out = t.path().join("m");
        let mut quiet = Quiet;
        // a missing directory: the run appears only at finish
        let mut run = RunDir::create(&out, false, serde_json::json!({}), &mut quiet).unwrap();
        assert!(!out.exists());
        run.finish(&model(), serde_json::json!({"best_epoch": 1}))
            .unwrap();
        drop(run);
        let first = std::fs::read(out.join(rewa::encode::CONFIG_FILE)).unwrap();
        assert_eq!(names(t.path()), ["m"]);
        // an existing model is refused without force, and left alone
        let e = check_out_dir(&out, false).unwrap_err();
        assert!(e.to_string().contains("--force"), "{e}");
        assert!(RunDir::create(&out, false, serde_json::json!({}), &mut quiet).is_err());
        // a run that does not finish leaves the old model and no partial directory
        let run = RunDir::create(&out, true, serde_json::json!({}), &mut quiet).unwrap();
        assert_eq!(
            names(t.path()).len(),
            2,
            "the run writes to a partial sibling"
        );
        drop(run);
        assert_eq!(names(t.path()), ["m"]);
        assert_eq!(
            std::fs::read(out.join(rewa::encode::CONFIG_FILE)).unwrap(),
            first
        );
        // with force, a finished run replaces it
        let mut run = RunDir::create(&out, true, serde_json::json!({}), &mut quiet).unwrap();
        run.finish(&model(), serde_json::json!({"best_epoch": 7}))
            .unwrap();
        drop(run);
        assert_eq!(names(t.path()), ["m"]);
        let cfg: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join(rewa::encode::CONFIG_FILE)).unwrap())
                .unwrap();
        assert_eq!(cfg["training"]["best_epoch"], 7);
        // a file is not a run directory
        std::fs::write(t.path().join("f"), b"x").unwrap();
        assert!(check_out_dir(&t.path().join("f"), true).is_err());
    }
}
