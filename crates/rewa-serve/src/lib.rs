//! `rewa serve`: an HTTP JSON server over one index directory (axum on tokio and hyper).
//!
//! | route | key | answer |
//! |---|---|---|
//! | `GET /health` | none | `{"status":"ok"}` |
//! | `GET /info` | read | the facts of `rewa info --json` ([`rewa::Index::summary`]) |
//! | `POST /search` | read | `{"vectors": [[..], ..], "k": 10, "pipeline": ".."}` or `{"texts": [..], ..}` -> `{"results": [[{"id", "score"[, "doc_id"]}, ..], ..], "took_ms"}` |
//! | `POST /add` | write | `{"vectors": [[..], ..]}` or `{"texts": [..], "ids": [..]}` -> `{"count", "first_id"}`, once the rows are durable |
//! | `POST /delete` | write | `{"ids": [..]}` (row ids) or `{"doc_ids": [..]}` (corpus ids) -> `{"deleted", "count"}`, once durable |
//! | `GET /metrics` | read | Prometheus text: requests by route and status, latency histograms, index size, saves, reloads |
//!
//! | module | what |
//! |---|---|
//! | `conn` | accepting connections up to a cap, the idle/header timeout, the graceful stop, JSON bodies for hyper's own 400/414/431 |
//! | `layer` | the middleware around every route: API key, shutdown, metrics, panics as 500; signals |
//! | `auth` | API keys (`api-key` header or `Authorization: Bearer`), compared in constant time |
//! | `routes` | the router; bodies read bounded in size and time; the in-flight limit; search |
//! | `state` | the shared state: the served index kept as fresh as the directory, add and delete |
//! | `api` | request and answer bodies; the one mapping from errors to statuses |
//! | `metrics` | the counters behind `/metrics` |
//!
//! Dependencies point one way: `lib` -> `conn`, `routes` -> `layer` -> `auth`, `state` ->
//! `api`, `metrics`.
//!
//! **Threads.** The async runtime only moves bytes. Searches (parsing, the input check,
//! the search, the answer's JSON) run on the server's own rayon pool; adds and deletes run on
//! blocking threads. The library stays synchronous: tokio, hyper and axum live in this crate.
//!
//! **Slow and stalled clients.** A connection must send a request's headers within
//! `idle_timeout` of waiting for them (this also closes idle keep-alive connections) and its
//! body within `body_timeout` (else 408); at most `max_connections` are open (past it, 503 and
//! close). An in-flight slot (`max_inflight`, else 429) is taken only once the body is read,
//! so clients that stall before or inside their bodies hold none.
//!
//! **Adds and searches.** The served index is an `Arc<Index>` behind a lock held only to clone
//! or replace the `Arc`. An add takes the directory's writer lock (so it also waits for another
//! process's `rewa add`), reopens the index from disk under it (cheap: files are mapped), so
//! rows and ids another process saved are kept and no id is given out twice, appends, saves
//! crash-safely, and only then swaps in the new index and answers. Adds that arrive while a
//! save runs are saved together by the next one (group commit). Searches meanwhile run on the
//! index they started with, whose files stay mapped after the save unlinks them. An answer is
//! sent only after the save returned, so an acknowledged add survives SIGKILL.
//!
//! **Other writers.** Each request checks (one `stat`) whether `manifest.json` was replaced
//! since the served index was opened, and reopens it if so: after `rewa add` or `rewa delete`
//! returns, the server's next answer includes it.
//!
//! **Keys.** With `api_key` or `read_only_key` set, every route but `/health` needs a key in
//! an `api-key` header or `Authorization: Bearer <key>`: 401 without one or with a wrong one,
//! 403 for the read-only key on `/add` or `/delete`. Keys travel in clear text over plain
//! HTTP: serve a non-loopback address behind a TLS proxy.
//!
//! **Errors** are JSON `{"error": ".."}` ([`ApiError`]): 400 for bad input (the library's own
//! messages) or a malformed request, 401 / 403 for keys, 404 / 405 for unknown routes and
//! methods, 408 for a body slower than `body_timeout`, 413 above the body limit, 414 for a URI
//! past 64 KiB, 429 above the in-flight limit, 431 for headers too large, 503 while shutting
//! down, past the connection cap, or while another writer holds the index too long, 500 for
//! anything else, a panic included.
#![warn(missing_docs)]

mod api;
mod auth;
mod conn;
mod layer;
mod metrics;
mod routes;
mod state;

pub use api::ApiError;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// What [`Server::bind`] needs. `rewa serve`'s flags map onto these fields one to one.
#[derive(Clone, Debug)]
pub struct Config {
    /// The index directory to serve.
    pub index: PathBuf,
    /// Address to listen on; port 0 picks a free one ([`Server::local_addr`] tells which).
    pub addr: SocketAddr,
    /// Threads searching (default: every core).
    pub threads: Option<usize>,
    /// The largest request body accepted, in bytes (larger: 413).
    pub max_body_bytes: usize,
    /// Search, add and delete requests answered at once (more: 429); a request counts from
    /// when its body has been read.
    pub max_inflight: usize,
    /// Open connections at most; a connection past it is answered 503 and closed.
    pub max_connections: usize,
    /// How long a connection may wait for a complete request head: idle keep-alive
    /// connections and half-sent headers are closed after it.
    pub idle_timeout: Duration,
    /// How long a request's body may take to arrive after its head (then 408).
    pub body_timeout: Duration,
    /// The key every route but `/health` accepts (`api-key` header or `Authorization:
    /// Bearer`); with neither key set, every route is open.
    pub api_key: Option<String>,
    /// A key for `/search`, `/info` and `/metrics` only (403 on `/add` and `/delete`).
    pub read_only_key: Option<String>,
    /// How long an add waits for another writer of the index (then 503).
    pub wait_lock: Duration,
    /// After SIGTERM or Ctrl-C, how long requests in flight may take before the server exits
    /// anyway.
    pub shutdown_grace: Duration,
    /// A sentence-embedding model directory (default: the one an index built from text
    /// records, whose weights it must match): `/search` then also takes `{"texts": [..]}`,
    /// embedded with it (its dimension must be the index's).
    pub model: Option<PathBuf>,
    /// The model's precision (default: the one an index built from text records, else f32;
    /// another than the recorded one is refused).
    pub precision: Option<rewa_embed::Precision>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            index: PathBuf::new(),
            addr: SocketAddr::from(([127, 0, 0, 1], 7878)),
            threads: None,
            max_body_bytes: 64 << 20,
            max_inflight: 64,
            max_connections: 512,
            idle_timeout: Duration::from_secs(20),
            body_timeout: Duration::from_secs(60),
            api_key: None,
            read_only_key: None,
            wait_lock: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(30),
            model: None,
            precision: None,
        }
    }
}

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The index could not be opened.
    #[error("opening index {}: {source}", path.display())]
    Open {
        /// The index directory.
        path: PathBuf,
        /// The library's error.
        source: rewa::Error,
    },
    /// A socket, thread or runtime could not be set up, or serving failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A setting is out of range.
    #[error("invalid setting: {0}")]
    Config(String),
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// A server bound to its address, with its index open; [`Server::run`] serves until SIGTERM
/// or Ctrl-C.
pub struct Server {
    runtime: tokio::runtime::Runtime,
    listener: tokio::net::TcpListener,
    state: Arc<state::AppState>,
    signals: layer::Signals,
    grace: Duration,
    limits: conn::Limits,
}

/// The most search threads: 4 per core (more only adds switching), and never above this.
pub const MAX_THREADS: usize = 1024;

/// Refuses settings out of range, naming them as `rewa serve`'s flags do.
fn check(config: &Config) -> Result<()> {
    let bad = |m: String| Err(Error::Config(m));
    if config.max_inflight == 0 {
        return bad("max_inflight must be at least 1".into());
    }
    if config.max_connections == 0 {
        return bad("max_connections must be at least 1".into());
    }
    if config.max_connections > u32::MAX as usize >> 3 {
        return bad(format!(
            "max_connections must be at most {}, got {}",
            u32::MAX >> 3,
            config.max_connections
        ));
    }
    if let Some(n) = config.threads {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let max = (4 * cores).min(MAX_THREADS);
        if n == 0 || n > max {
            return bad(format!(
                "threads must be between 1 and {max} (4 per core on this machine's {cores}, at most {MAX_THREADS}), got {n}"
            ));
        }
    }
    for (what, d) in [
        ("idle_timeout", config.idle_timeout),
        ("body_timeout", config.body_timeout),
    ] {
        if d.is_zero() {
            return bad(format!("{what} must be above 0"));
        }
    }
    for (what, k) in [
        ("api_key", &config.api_key),
        ("read_only_key", &config.read_only_key),
    ] {
        if k.as_deref().is_some_and(|k| k.trim().is_empty()) {
            return bad(format!("{what} is empty"));
        }
    }
    if config.api_key.is_some() && config.api_key == config.read_only_key {
        return bad("api_key and read_only_key are the same key".into());
    }
    Ok(())
}

impl Server {
    /// Opens the index, builds the search pool and the runtime, binds the address and
    /// installs the signal handlers (so a SIGTERM from now on is a graceful stop).
    pub fn bind(config: Config) -> Result<Server> {
        check(&config)?;
        let open_err = |source| Error::Open {
            path: config.index.clone(),
            source,
        };
        // The manifest first: see `state`.
        let manifest = state::Manifest::open(&config.index).map_err(open_err)?;
        let index = rewa::Index::open(&config.index).map_err(open_err)?;
        // lists laid out before the first request (else it would wait for them)
        index.warm(None).map_err(open_err)?;
        // The model: the one given, else the one an index built from text records; a model
        // whose weights differ from the recorded ones is refused.
        let model_dir = config
            .model
            .clone()
            .or_else(|| index.text_model().map(|m| PathBuf::from(&m.dir)));
        let embedder = match &model_dir {
            Some(dir) => {
                // in the precision the index's documents were embedded in
                let recorded = index
                    .text_model()
                    .map(rewa_embed::Embedder::recorded_precision)
                    .transpose()
                    .map_err(|e| Error::Config(e.to_string()))?;
                let precision = match (config.precision, recorded) {
                    (Some(p), Some(r)) if p != r => {
                        return Err(Error::Config(format!(
                            "precision {p}: the index's documents were embedded in {r}, and queries must be embedded the same way"
                        )))
                    }
                    (p, r) => p.or(r).unwrap_or_default(),
                };
                let mut e = rewa_embed::Embedder::load_precision(dir, precision).map_err(|e| {
                    Error::Config(format!("loading the model {}: {e}", dir.display()))
                })?;
                if let Some(recorded) = index.text_model() {
                    e.check_against(recorded)
                        .map_err(|e| Error::Config(e.to_string()))?;
                }
                if e.dim() != index.dim() {
                    return Err(Error::Config(format!(
                        "the model {} makes {}-dimensional vectors, but the index holds {}",
                        dir.display(),
                        e.dim(),
                        index.dim()
                    )));
                }
                Some(Arc::new(e))
            }
            None => None,
        };
        let mut pool = rayon::ThreadPoolBuilder::new().thread_name(|i| format!("rewa-search-{i}"));
        if let Some(n) = config.threads {
            pool = pool.num_threads(n);
        }
        let pool = pool.build().map_err(|e| Error::Io {
            what: "starting the search threads".into(),
            source: std::io::Error::other(e),
        })?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("rewa-serve-io")
            .build()
            .map_err(io("starting the async runtime"))?;
        let addr = config.addr;
        let (listener, signals) = runtime.block_on(async {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(io(format!("listening on {addr}")))?;
            Ok::<_, Error>((l, layer::Signals::install()?))
        })?;
        Ok(Server {
            runtime,
            listener,
            state: Arc::new(state::AppState::new(
                &config,
                (index, manifest),
                pool,
                embedder,
            )),
            signals,
            grace: config.shutdown_grace,
            limits: conn::Limits {
                idle_timeout: config.idle_timeout,
                max_connections: config.max_connections,
            },
        })
    }

    /// The address the server listens on (the port chosen when port 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("invariant: a bound listener has an address")
    }

    /// The index being served, as opened.
    pub fn index(&self) -> Arc<rewa::Index> {
        self.state.current()
    }

    /// Whether keys are required (`api_key` or `read_only_key` set).
    pub fn needs_keys(&self) -> bool {
        self.state.keys.enabled()
    }

    /// Threads in the search pool.
    pub fn threads(&self) -> usize {
        self.state.pool.current_num_threads()
    }

    /// Serves until SIGTERM or Ctrl-C, then stops accepting connections, finishes the requests
    /// in flight (at most `shutdown_grace`) and returns. `log` receives one line when the
    /// stop begins.
    pub fn run(self, log: fn(&str)) -> Result<()> {
        let Server {
            runtime,
            listener,
            state,
            signals,
            grace,
            limits,
        } = self;
        let app = routes::router(state.clone());
        let stopping = Arc::new(tokio::sync::Notify::new());
        runtime.block_on(async {
            let stop = {
                let (state, stopping) = (state.clone(), stopping.clone());
                async move {
                    signals.wait().await;
                    state.begin_shutdown();
                    log(&format!(
                        "shutting down: finishing {} requests in flight",
                        state.inflight()
                    ));
                    stopping.notify_one();
                }
            };
            let serve = conn::serve(listener, app, limits, stop);
            let deadline = async {
                stopping.notified().await;
                tokio::time::sleep(grace).await;
            };
            tokio::select! {
                () = serve => Ok(()),
                _ = deadline => {
                    log(&format!("requests still in flight after {grace:?}; exiting anyway"));
                    Ok(())
                }
            }
        })
    }
}
