//! `rewa serve`: parses flags and runs the server of the `rewa-serve` crate.

use crate::data::log;
use anyhow::{bail, Result};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Serve one index over HTTP with JSON bodies: GET /health, GET /info, POST /search
/// {"vectors": [[..]], "k": 10}, POST /add {"vectors": [[..]]}, GET /metrics. SIGTERM or
/// Ctrl-C stops accepting connections, finishes the requests in flight and exits 0.
#[derive(clap::Args)]
pub struct Args {
    /// Index directory to serve (adds are saved into it).
    #[arg(long)]
    index: PathBuf,
    /// Address to listen on; port 0 picks a free port, printed on stderr at start.
    #[arg(long, default_value = "127.0.0.1:7878")]
    addr: SocketAddr,
    /// Threads searching (default: every core).
    #[arg(long)]
    threads: Option<usize>,
    /// Largest request body accepted, in MiB (fractions allowed); larger bodies get 413.
    #[arg(long, default_value_t = 64.0, value_name = "MB")]
    max_body_mb: f64,
    /// Search and add requests answered at once; more get 429.
    #[arg(long, default_value_t = 64)]
    max_inflight: usize,
    /// Seconds an add waits for another writer of the index (e.g. `rewa add`) before 503.
    #[arg(long, default_value_t = 60.0, value_name = "SECONDS")]
    wait_lock: f64,
    /// A sentence-transformers model directory (as `rewa embed --model`): /search then also
    /// takes {"texts": ["..."], "k": 10}, embedded with it. Its dimension must be the index's.
    /// An index built with `rewa build --text` needs none: its recorded model is loaded (and
    /// a --model whose weights differ is refused); hits then carry "doc_id".
    #[arg(long, value_name = "DIR")]
    model: Option<PathBuf>,
}

pub fn run(a: Args) -> Result<()> {
    if !(a.max_body_mb.is_finite() && a.max_body_mb > 0.0) {
        bail!("--max-body-mb must be a number > 0, got {}", a.max_body_mb);
    }
    if !(a.wait_lock.is_finite() && a.wait_lock >= 0.0) {
        bail!(
            "--wait-lock must be a number of seconds >= 0, got {}",
            a.wait_lock
        );
    }
    let config = rewa_serve::Config {
        index: a.index,
        addr: a.addr,
        threads: a.threads,
        max_body_bytes: (a.max_body_mb * (1u64 << 20) as f64).min(usize::MAX as f64) as usize,
        max_inflight: a.max_inflight,
        wait_lock: Duration::from_secs_f64(a.wait_lock.min(1e9)),
        model: a.model,
        ..Default::default()
    };
    let server = rewa_serve::Server::bind(config)?;
    let index = server.index();
    log(&format!(
        "listening on http://{} ({} vectors, dim {}, {} search threads)",
        server.local_addr(),
        index.len(),
        index.dim(),
        server.threads()
    ));
    drop(index);
    server.run(log)?;
    log("stopped");
    Ok(())
}
