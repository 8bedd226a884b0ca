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

/// A progress bar on stderr for `total` items. When stderr is not a terminal (a log file, a
/// pipe), where indicatif draws nothing, it prints plain lines instead,
/// `[rewa] embedding texts 1200/5183 (00:00:42 elapsed, eta 2m)`, at most one every 10 s
/// (`REWA_PROGRESS_SECS` changes that, for tests).
pub fn progress_bar(total: u64, what: &str) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::new(total).with_style(
            indicatif::ProgressStyle::with_template(&format!(
                "{what} {{bar:40}} {{pos}}/{{len}} ({{per_sec}}, eta {{eta}}) {{msg}}"
            ))
            .expect("invariant: valid template"),
        );
    }
    let every = std::env::var("REWA_PROGRESS_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(
            std::time::Duration::from_secs(10),
            std::time::Duration::from_secs_f64,
        );
    let lines = LogLines {
        every,
        state: std::sync::Mutex::new((String::new(), None)),
    };
    indicatif::ProgressBar::with_draw_target(
        Some(total),
        indicatif::ProgressDrawTarget::term_like_with_hz(Box::new(lines), 1),
    )
    .with_style(
        indicatif::ProgressStyle::with_template(&format!(
            "{what} {{pos}}/{{len}} ({{elapsed_precise}} elapsed, eta {{eta}}) {{msg}}"
        ))
        .expect("invariant: valid template"),
    )
}

/// A progress bar's draw target that turns each drawn state into one `[rewa]` line on stderr,
/// at most one per `every` (the first at once); cursor moves and clears mean nothing in a log.
#[derive(Debug)]
struct LogLines {
    every: std::time::Duration,
    /// The line being drawn, and when the last one was printed.
    state: std::sync::Mutex<(String, Option<Instant>)>,
}

impl indicatif::TermLike for LogLines {
    fn width(&self) -> u16 {
        // indicatif pads each line to the width; the padding is trimmed again
        1000
    }
    fn move_cursor_up(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_down(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_right(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_left(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn write_line(&self, s: &str) -> std::io::Result<()> {
        self.write_str(s)
    }
    fn write_str(&self, s: &str) -> std::io::Result<()> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.0.push_str(s);
        Ok(())
    }
    fn clear_line(&self) -> std::io::Result<()> {
        Ok(())
    }
    fn flush(&self) -> std::io::Result<()> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let line = st.0.trim().to_string();
        st.0.clear();
        let due = st.1.is_none_or(|t| t.elapsed() >= self.every);
        if !line.is_empty() && due {
            log(&line);
            st.1 = Some(Instant::now());
        }
        Ok(())
    }
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
