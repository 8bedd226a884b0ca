//! The routes, the server's state, and the two flows that touch the index: search and add.

use crate::api::{self, AddResponse, ApiError, HitOut, SearchResponse};
use crate::layer::{self, Slot};
use crate::metrics::Metrics;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rewa::index::WriteLock;
use rewa::{Index, SearchParams};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, TryRecvError};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// Everything the handlers share.
pub(crate) struct AppState {
    dir: PathBuf,
    /// The index searches start from; replaced whole after each saved add.
    index: RwLock<Arc<Index>>,
    pub pool: rayon::ThreadPool,
    /// Held by the add that is saving; the others queue here, not on the directory's file lock.
    writer: Mutex<()>,
    /// Adds waiting for the next save.
    queue: Mutex<Vec<Waiting>>,
    wait_lock: Duration,
    max_body_bytes: usize,
    pub max_inflight: usize,
    inflight: AtomicUsize,
    shutting_down: AtomicBool,
    pub metrics: Metrics,
    /// The model `{"texts": [..]}` searches are embedded with, if the server has one.
    embedder: Option<Arc<rewa_embed::Embedder>>,
}

impl AppState {
    pub fn new(
        config: &crate::Config,
        index: Index,
        pool: rayon::ThreadPool,
        embedder: Option<Arc<rewa_embed::Embedder>>,
    ) -> Self {
        AppState {
            dir: config.index.clone(),
            index: RwLock::new(Arc::new(index)),
            pool,
            writer: Mutex::new(()),
            queue: Mutex::new(Vec::new()),
            wait_lock: config.wait_lock,
            max_body_bytes: config.max_body_bytes,
            max_inflight: config.max_inflight,
            inflight: AtomicUsize::new(0),
            shutting_down: AtomicBool::new(false),
            metrics: Metrics::default(),
            embedder,
        }
    }
    /// The index as of the last saved add.
    pub fn current(&self) -> Arc<Index> {
        self.index.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
    pub fn enter(&self) -> Option<Slot<'_>> {
        Slot::take(&self.inflight, self.max_inflight)
    }
    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Acquire)
    }
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Release);
    }
    pub fn shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    /// Appends the body's vectors and saves; returns only once they are durable. Runs on a
    /// blocking thread.
    ///
    /// Group commit: a save writes the added rows as a new segment (small segments are merged
    /// as they accumulate), so the adds that queue while one save runs are saved together by
    /// the next, as one segment: the first of them to take the
    /// writer mutex appends them all in arrival order, saves once, and answers each (ids in
    /// arrival order). Every answer still waits for the save that holds its vectors.
    fn add(&self, body: &[u8]) -> Result<AddResponse, ApiError> {
        let req: api::AddRequest = api::parse(body)?;
        let vectors = req.vectors.into_vectors()?;
        // The input check before queueing: a bad request costs no writer time and cannot fail
        // the group it would have joined.
        let dim = self.current().dim();
        if vectors.dim() != dim {
            return Err(rewa::Error::DimMismatch {
                expected: dim,
                got: vectors.dim(),
            }
            .into());
        }
        vectors.view().check_finite()?;
        let (answer, rx) = mpsc::channel();
        lock(&self.queue).push(Waiting { vectors, answer });
        let _writer = lock(&self.writer);
        match rx.try_recv() {
            Ok(done) => return done, // the save before held ours
            Err(TryRecvError::Disconnected) => {
                return Err(ApiError::internal("the save holding this add failed"))
            }
            Err(TryRecvError::Empty) => {}
        }
        let group = std::mem::take(&mut *lock(&self.queue));
        match self.save_group(&group) {
            Ok(answers) => {
                for (w, a) in group.iter().zip(answers) {
                    let _ = w.answer.send(Ok(a));
                }
            }
            Err(e) => {
                for w in &group {
                    let _ = w.answer.send(Err(e.clone()));
                }
            }
        }
        // invariant: our own entry was in the group just answered
        rx.recv()
            .unwrap_or_else(|_| Err(ApiError::internal("this add was lost")))
    }

    /// Deletes the body's ids and saves (only the list of deleted ids is written); returns once
    /// durable. Runs on a blocking thread, under the writer mutex.
    fn delete(&self, body: &[u8]) -> Result<api::DeleteResponse, ApiError> {
        let req: api::DeleteRequest = api::parse(body)?;
        let _writer = lock(&self.writer);
        let wlock = WriteLock::acquire_existing(&self.dir, self.wait_lock)?;
        let mut index = Index::open(&self.dir)?;
        let deleted = index.delete(&req.ids)?;
        if deleted > 0 {
            index.save_locked(&wlock)?;
            self.metrics.saved();
        }
        let count = index.len();
        *self.index.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(index);
        Ok(api::DeleteResponse { deleted, count })
    }

    /// Appends every waiting add in one save; the answers in the same order.
    fn save_group(&self, group: &[Waiting]) -> Result<Vec<AddResponse>, ApiError> {
        let lock = WriteLock::acquire_existing(&self.dir, self.wait_lock)?;
        // Always from disk: another process (`rewa add`, `rewa tune`) may have written since.
        let mut index = Index::open(&self.dir)?;
        let mut all = rewa::Vectors::empty(index.dim());
        let mut first_ids = Vec::with_capacity(group.len());
        for w in group {
            first_ids.push(index.next_id() + all.len());
            all.extend(w.vectors.view())?;
        }
        let data = index.metric().prepare_owned(all)?;
        index.add_prepared(&data, &mut |_, _| {})?;
        index.save_locked(&lock)?;
        self.metrics.saved();
        let count = index.len();
        let old = std::mem::replace(
            &mut *self.index.write().unwrap_or_else(|e| e.into_inner()),
            Arc::new(index),
        );
        drop(old); // freed (if no search holds it) after the lock is released
        Ok(first_ids
            .into_iter()
            .map(|first_id| AddResponse { count, first_id })
            .collect())
    }
}

/// An add waiting for the save that will hold it.
struct Waiting {
    vectors: rewa::Vectors,
    answer: mpsc::Sender<Result<AddResponse, ApiError>>,
}

/// A mutex's guard; a panic elsewhere while it was held leaves data that is still whole
/// (a queue, or nothing), so poisoning is ignored.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The router: six routes, JSON 404 / 405 answers, and [`layer::guard`] around all of them.
pub(crate) fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/info", get(info))
        .route("/search", post(search))
        .route("/add", post(add))
        .route("/delete", post(delete))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            layer::guard,
        ))
        .with_state(state)
}

async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

async fn info(State(s): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let s2 = s.clone();
    let summary = tokio::task::spawn_blocking(move || s2.current().summary(Some(&s2.dir)))
        .await
        .map_err(join_error)??;
    Ok(Json(summary).into_response())
}

async fn metrics(State(s): State<Arc<AppState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(s.current().len(), s.inflight()),
    )
        .into_response()
}

async fn search(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let t = Instant::now();
    let body = read_body(&headers, body, s.max_body_bytes).await?;
    let index = s.current();
    let embedder = s.embedder.clone();
    // Parsing, the search and the answer's JSON (large for big batches) all on the pool.
    let json = on_pool(&s.pool, move || {
        let req: api::SearchRequest = api::parse(&body)?;
        let params = SearchParams {
            k: req.k,
            pipeline: req.pipeline.map(|p| p.parse()).transpose()?,
        };
        let vectors = match (req.vectors, req.texts) {
            (Some(v), None) => v.into_vectors()?,
            (None, Some(texts)) => {
                let Some(e) = &embedder else {
                    return Err(ApiError::bad_request(
                        "\"texts\" needs a server started with --model DIR; send \"vectors\"",
                    ));
                };
                if texts.is_empty() {
                    return Err(ApiError::bad_request("\"texts\" holds zero texts"));
                }
                if let Some(i) = texts.iter().position(|t| t.trim().is_empty()) {
                    return Err(ApiError::bad_request(format!("text {i} is empty")));
                }
                let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
                e.embed(&refs)?
            }
            _ => {
                return Err(ApiError::bad_request(
                    "give exactly one of \"vectors\" and \"texts\"",
                ))
            }
        };
        let queries = index.metric().prepare_owned(vectors)?;
        let hits = index.search_prepared(&queries, &params)?;
        let metric = index.metric();
        let doc_ids = index.doc_ids();
        let results = hits
            .into_iter()
            .map(|hs| {
                hs.into_iter()
                    .map(|h| HitOut {
                        id: h.id,
                        score: metric.score(h.distance),
                        doc_id: doc_ids.map(|d| d[h.id as usize].clone()),
                    })
                    .collect()
            })
            .collect();
        let answer = SearchResponse {
            results,
            took_ms: t.elapsed().as_secs_f64() * 1e3,
        };
        serde_json::to_vec(&answer).map_err(|e| ApiError::internal(e.to_string()))
    })
    .await?;
    Ok(([(header::CONTENT_TYPE, "application/json")], json).into_response())
}

async fn add(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<AddResponse>, ApiError> {
    let body = read_body(&headers, body, s.max_body_bytes).await?;
    let s2 = s.clone();
    let answer = tokio::task::spawn_blocking(move || s2.add(&body))
        .await
        .map_err(join_error)??;
    Ok(Json(answer))
}

async fn delete(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<api::DeleteResponse>, ApiError> {
    let body = read_body(&headers, body, s.max_body_bytes).await?;
    let s2 = s.clone();
    let answer = tokio::task::spawn_blocking(move || s2.delete(&body))
        .await
        .map_err(join_error)??;
    Ok(Json(answer))
}

async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no route {method} {uri} (routes: GET /health, GET /info, POST /search, POST /add, POST /delete, GET /metrics)"),
    )
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{} does not take {method}", uri.path()),
    )
}

/// The whole body, at most `limit` bytes: a declared length above it is refused before
/// anything is read, an undeclared one as soon as it passes the limit.
async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body is larger than the server's limit of {limit} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let over = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
        if over {
            too_large()
        } else {
            ApiError::bad_request(format!("reading the request body: {e}"))
        }
    })
}

/// Runs `f` on the search pool and awaits it without holding a runtime thread; a panic in
/// `f` is a 500 answer (rayon would otherwise abort the process).
async fn on_pool<T: Send + 'static>(
    pool: &rayon::ThreadPool,
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    pool.spawn(move || {
        let r = catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|p| Err(ApiError::panic(p)));
        let _ = tx.send(r); // the client may have gone away
    });
    rx.await
        .map_err(|_| ApiError::internal("the search pool dropped the request"))?
}

fn join_error(e: tokio::task::JoinError) -> ApiError {
    match e.try_into_panic() {
        Ok(p) => ApiError::panic(p),
        Err(e) => ApiError::internal(format!("the task did not finish: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_on_the_pool_is_a_500_answer_and_the_pool_lives_on() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let e = rt
            .block_on(on_pool(&pool, || -> Result<(), ApiError> {
                panic!("in a search")
            }))
            .unwrap_err();
        assert_eq!(e.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(e.message.contains("in a search"), "{}", e.message);
        assert_eq!(rt.block_on(on_pool(&pool, || Ok(7))).unwrap(), 7);
    }
}
