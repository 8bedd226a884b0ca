//! `rewa serve`: parses flags and runs the server of the `rewa-serve` crate.

use crate::data::log;
use anyhow::{bail, Result};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Serve one index over HTTP with JSON bodies: GET /health, GET /info, POST /search
/// {"vectors": [[..]], "k": 10}, POST /add {"vectors": [[..]]}, POST /delete {"ids": [..]},
/// GET /metrics. SIGTERM or Ctrl-C stops accepting connections, finishes the requests in
/// flight and exits 0.
///
/// Anyone who can reach --addr can search, add and delete unless --api-key is set. The
/// default 127.0.0.1 is this machine only; binding another address (0.0.0.0, a LAN IP)
/// exposes the index to that network: set keys, and put a TLS proxy (Caddy, nginx) in front,
/// since plain HTTP carries the keys in clear text.
#[derive(clap::Args)]
#[command(
    after_help = "Exposure: anyone who can reach --addr can search, add and delete unless \
--api-key is set. The default 127.0.0.1 is this machine only; any other address (0.0.0.0, a LAN \
IP) exposes the index to that network: set keys, and put a TLS proxy (Caddy, nginx; see the \
README) in front, since plain HTTP carries the keys in clear text."
)]
pub struct Args {
    /// Index directory to serve (adds are saved into it). Writes by other processes (`rewa
    /// add`, `rewa delete`) are seen by the next request.
    #[arg(long)]
    index: PathBuf,
    /// Address to listen on; port 0 picks a free port, printed on stderr at start. Anything
    /// but a loopback address is reachable from the network: see --api-key.
    #[arg(long, default_value = "127.0.0.1:7878")]
    addr: SocketAddr,
    /// Threads searching (default: every core; at most 4 per core and 1024).
    #[arg(long)]
    threads: Option<usize>,
    /// Largest request body accepted, in MiB (fractions allowed); larger bodies get 413.
    #[arg(long, default_value_t = 64.0, value_name = "MB")]
    max_body_mb: f64,
    /// Search, add and delete requests answered at once; more get 429. A request counts once
    /// its body has arrived, so slow clients hold none.
    #[arg(long, default_value_t = 64)]
    max_inflight: usize,
    /// Open connections at most; one past it is answered 503 and closed.
    #[arg(long, default_value_t = 512)]
    max_connections: usize,
    /// Seconds a connection may go without a complete request head: idle keep-alive
    /// connections and half-sent headers are closed after it.
    #[arg(long, default_value_t = 20.0, value_name = "SECONDS")]
    idle_timeout: f64,
    /// Seconds a request body may take to arrive after its head; a slower one gets 408 and
    /// its connection is closed.
    #[arg(long, default_value_t = 60.0, value_name = "SECONDS")]
    body_timeout: f64,
    /// Seconds an add waits for another writer of the index (e.g. `rewa add`) before 503.
    #[arg(long, default_value_t = 60.0, value_name = "SECONDS")]
    wait_lock: f64,
    /// Require this key on every route but /health (default: $REWA_API_KEY; none: all open),
    /// sent as an `api-key: KEY` header or `Authorization: Bearer KEY`. Missing or wrong: 401.
    /// Prefer the variable: a flag shows in the process list.
    #[arg(long, value_name = "KEY")]
    api_key: Option<String>,
    /// A key for /search, /info and /metrics only (default: $REWA_READ_ONLY_KEY); /add and
    /// /delete with it get 403.
    #[arg(long, value_name = "KEY")]
    read_only_key: Option<String>,
    /// A sentence-transformers model directory (as `rewa embed --model`): /search then also
    /// takes {"texts": ["..."], "k": 10}, embedded with it, and /add {"texts": [..]}. Its
    /// dimension must be the index's. An index built with `rewa build --text` needs none: its
    /// recorded model is loaded (and a --model whose weights differ is refused); hits then
    /// carry "doc_id", /add takes {"texts": [..], "ids": [..]} and /delete {"doc_ids": [..]}.
    #[arg(long, value_name = "DIR")]
    model: Option<PathBuf>,
    /// The model's linear layers in `f32` or `int8` (see `rewa embed --help`); default: what
    /// an index built from text records (another is refused), else f32.
    #[arg(long, value_name = "f32|int8")]
    precision: Option<rewa_embed::Precision>,
}

/// A positive, finite number of seconds.
fn seconds(flag: &str, v: f64) -> Result<Duration> {
    if !(v.is_finite() && v > 0.0) {
        bail!("{flag} must be a number of seconds > 0, got {v}");
    }
    Ok(Duration::from_secs_f64(v.min(1e9)))
}

/// The flag's key, else the environment variable's (an empty variable counts as unset).
fn key(flag: Option<String>, var: &str) -> Option<String> {
    flag.or_else(|| std::env::var(var).ok().filter(|k| !k.is_empty()))
}

/// The server's setting names as this command's flags (`max_inflight` -> `--max-inflight`).
fn flag_names(e: rewa_serve::Error) -> anyhow::Error {
    match e {
        rewa_serve::Error::Config(m) => {
            let mut words: Vec<String> = m.split(' ').map(str::to_owned).collect();
            for w in &mut words {
                if let Some(f) = [
                    "threads",
                    "max_inflight",
                    "max_connections",
                    "idle_timeout",
                    "body_timeout",
                    "api_key",
                    "read_only_key",
                ]
                .iter()
                .find(|f| *w == **f)
                {
                    *w = format!("--{}", f.replace('_', "-"));
                }
            }
            anyhow::anyhow!("invalid setting: {}", words.join(" "))
        }
        e => e.into(),
    }
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
        max_connections: a.max_connections,
        idle_timeout: seconds("--idle-timeout", a.idle_timeout)?,
        body_timeout: seconds("--body-timeout", a.body_timeout)?,
        api_key: key(a.api_key, "REWA_API_KEY"),
        read_only_key: key(a.read_only_key, "REWA_READ_ONLY_KEY"),
        wait_lock: Duration::from_secs_f64(a.wait_lock.min(1e9)),
        model: a.model,
        precision: a.precision,
        ..Default::default()
    };
    let server = rewa_serve::Server::bind(config).map_err(flag_names)?;
    let index = server.index();
    let addr = server.local_addr();
    log(&format!(
        "listening on http://{addr} ({} vectors, dim {}, {} search threads{})",
        index.len(),
        index.dim(),
        server.threads(),
        if server.needs_keys() {
            ", API keys required"
        } else {
            ""
        }
    ));
    if !addr.ip().is_loopback() && !server.needs_keys() {
        log(&format!(
            "warning: {addr} is reachable from the network and no --api-key is set: anyone who reaches it can add and delete"
        ));
    }
    drop(index);
    server.run(log)?;
    log("stopped");
    Ok(())
}
