//! Loading inputs for commands: vectors with the metric's normalisation, and checks that name
//! the file at fault.

use anyhow::{bail, Context, Result};
use rewa::{Metric, Prepared, Vectors};
use std::path::Path;
use std::time::Instant;

/// Reads vectors and, for cosine, normalises them once.
pub fn load(path: &Path, metric: Metric) -> Result<Vectors> {
    let t = Instant::now();
    let mut v = rewa::io::read_vectors(path)
        .with_context(|| format!("reading vectors from {}", path.display()))?;
    if metric.normalizes() {
        v.normalize();
    }
    log(&format!(
        "read {} x {} from {} in {:.2}s",
        v.len(),
        v.dim(),
        path.display(),
        t.elapsed().as_secs_f64()
    ));
    Ok(v)
}

/// Reads vectors and prepares them for `metric` (checked, normalised once, in place).
pub fn load_prepared(path: &Path, metric: Metric) -> Result<Prepared<'static>> {
    let t = Instant::now();
    let v = rewa::io::read_vectors(path)
        .with_context(|| format!("reading vectors from {}", path.display()))?;
    let p = metric
        .prepare_owned(v)
        .with_context(|| format!("reading vectors from {}", path.display()))?;
    log(&format!(
        "read {} x {} from {} in {:.2}s",
        p.len(),
        p.dim(),
        path.display(),
        t.elapsed().as_secs_f64()
    ));
    Ok(p)
}

/// Reads the optional training file prepared for `metric` and checks its dimension against
/// the base's.
pub fn load_train_prepared(
    train: Option<&Path>,
    metric: Metric,
    base: &Path,
    dim: usize,
) -> Result<Option<Prepared<'static>>> {
    let Some(p) = train else { return Ok(None) };
    let t = load_prepared(p, metric)?;
    check_dim(p, t.dim(), base, dim)?;
    Ok(Some(t))
}

/// Fails unless `got` equals the dimension `want` of `base`, naming both files.
pub fn check_dim(path: &Path, got: usize, base: &Path, want: usize) -> Result<()> {
    if got != want {
        return Err(anyhow::Error::new(rewa::Error::DimMismatch {
            expected: want,
            got,
        }))
        .with_context(|| {
            format!(
                "{} has dimension {got}, but {} has {want}",
                path.display(),
                base.display(),
            )
        });
    }
    Ok(())
}

/// A progress bar on stderr for `total` items.
pub fn progress_bar(total: u64, what: &str) -> indicatif::ProgressBar {
    indicatif::ProgressBar::new(total).with_style(
        indicatif::ProgressStyle::with_template(&format!(
            "{what} {{bar:40}} {{pos}}/{{len}} ({{per_sec}}, eta {{eta}}) {{msg}}"
        ))
        .expect("invariant: valid template"),
    )
}

/// Fails unless `v` has dimension `dim`, naming both files.
pub fn same_dim(v: &Vectors, path: &Path, dim: usize, base: &Path) -> Result<()> {
    check_dim(path, v.dim(), base, dim)
}

/// Reads the optional training file with the base's metric and checks its dimension.
pub fn load_train(
    train: Option<&Path>,
    metric: Metric,
    base: &Vectors,
    base_path: &Path,
) -> Result<Option<Vectors>> {
    let Some(p) = train else { return Ok(None) };
    let t = load(p, metric)?;
    same_dim(&t, p, base.dim(), base_path)?;
    Ok(Some(t))
}

/// Reads labels and checks there is one per vector.
pub fn labels(path: &Path, n: usize, what: &Path) -> Result<Vec<i64>> {
    let l = rewa::io::read_labels(path)
        .with_context(|| format!("reading labels from {}", path.display()))?;
    if l.len() != n {
        bail!(
            "{} holds {} labels, but {} holds {} vectors",
            path.display(),
            l.len(),
            what.display(),
            n
        );
    }
    Ok(l)
}

/// A progress line on stderr.
pub fn log(msg: &str) {
    eprintln!("[rewa] {msg}");
}

/// The process's memory as Linux reports it in `/proc/self/status`: peak resident set
/// (`VmHWM`), and the resident set now split into anonymous memory (`RssAnon`: heap, not
/// reclaimable without swap) and file-backed pages (`RssFile`: an index's mapped codes and
/// vectors, clean page cache the kernel may drop and read again). In bytes; `null` where the
/// system does not say.
pub fn memory_json() -> serde_json::Value {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kb: u64 = line[name.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kb * 1024)
    };
    serde_json::json!({
        "peak_rss_bytes": field("VmHWM:"),
        "rss_anon_bytes": field("RssAnon:"),
        "rss_file_bytes": field("RssFile:"),
    })
}
