//! `rewa serve`: an HTTP JSON server over one index directory (axum on tokio).
//!
//! | route | answer |
//! |---|---|
//! | `GET /health` | `{"status":"ok"}` |
//! | `GET /info` | the facts of `rewa info --json` ([`rewa::Index::summary`]) |
//! | `POST /search` | `{"vectors": [[..], ..], "k": 10, "pipeline": ".."}` -> `{"results": [[{"id", "score"}, ..], ..], "took_ms"}` |
//! | `POST /add` | `{"vectors": [[..], ..]}` -> `{"count", "first_id"}`, once the vectors are durable |
//! | `GET /metrics` | Prometheus text: requests by route and status, latency histograms, index size |
//!
//! **Threads.** The async runtime only moves bytes. Searches (parsing, the input check,
//! the search, the answer's JSON) run on the server's own rayon pool; an add runs on a blocking
//! thread. The library stays synchronous: tokio and axum live in this crate only.
//!
//! **Adds and searches.** The served index is an `Arc<Index>` behind a lock held only to clone
//! or replace the `Arc`. An add takes the directory's writer lock (so it also waits for another
//! process's `rewa add`), reopens the index from disk (cheap: files are mapped), appends, saves
//! crash-safely, and only then swaps in the new index and answers. Adds that arrive while a
//! save runs are saved together by the next one (group commit), since each save rewrites the
//! whole index. Searches meanwhile run on
//! the index they started with, whose files stay mapped after the save unlinks them. An answer
//! is sent only after the save returned, so an acknowledged add survives SIGKILL.
//!
//! **Errors** are JSON `{"error": ".."}` ([`ApiError`]): 400 for bad input (the library's own
//! messages), 404 / 405 for unknown routes and methods, 413 above the body limit, 429 above
//! the in-flight limit, 503 while shutting down or while another writer holds the index too
//! long, 500 for anything else, a panic included.
#![warn(missing_docs)]

mod api;
mod layer;
mod metrics;
mod routes;

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
    /// Search and add requests answered at once (more: 429).
    pub max_inflight: usize,
    /// How long an add waits for another writer of the index (then 503).
    pub wait_lock: Duration,
    /// After SIGTERM or Ctrl-C, how long requests in flight may take before the server exits
    /// anyway.
    pub shutdown_grace: Duration,
    /// A sentence-embedding model directory (default: the one an index built from text
    /// records, whose weights it must match): `/search` then also takes `{"texts": [..]}`,
    /// embedded with it (its dimension must be the index's).
    pub model: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            index: PathBuf::new(),
            addr: SocketAddr::from(([127, 0, 0, 1], 7878)),
            threads: None,
            max_body_bytes: 64 << 20,
            max_inflight: 64,
            wait_lock: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(30),
            model: None,
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
    state: Arc<routes::AppState>,
    signals: layer::Signals,
    grace: Duration,
}

impl Server {
    /// Opens the index, builds the search pool and the runtime, binds the address and
    /// installs the signal handlers (so a SIGTERM from now on is a graceful stop).
    pub fn bind(config: Config) -> Result<Server> {
        if config.max_inflight == 0 {
            return Err(Error::Config("max_inflight must be at least 1".into()));
        }
        if config.threads == Some(0) {
            return Err(Error::Config("threads must be at least 1".into()));
        }
        let index = rewa::Index::open(&config.index).map_err(|source| Error::Open {
            path: config.index.clone(),
            source,
        })?;
        // The model: the one given, else the one an index built from text records; a model
        // whose weights differ from the recorded ones is refused.
        let model_dir = config
            .model
            .clone()
            .or_else(|| index.text_model().map(|m| PathBuf::from(&m.dir)));
        let embedder = match &model_dir {
            Some(dir) => {
                let mut e = rewa_embed::Embedder::load(dir).map_err(|e| {
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
            state: Arc::new(routes::AppState::new(&config, index, pool, embedder)),
            signals,
            grace: config.shutdown_grace,
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
            let serve = axum::serve(listener, app).with_graceful_shutdown(stop);
            let deadline = async {
                stopping.notified().await;
                tokio::time::sleep(grace).await;
            };
            tokio::select! {
                r = serve => r.map_err(io("serving")),
                _ = deadline => {
                    log(&format!("requests still in flight after {grace:?}; exiting anyway"));
                    Ok(())
                }
            }
        })
    }
}
