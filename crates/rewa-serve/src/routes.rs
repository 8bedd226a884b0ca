//! The routes: reading bodies (bounded in size and time), the in-flight limit, and the
//! search flow; adds and deletes are the state's ([`AppState::add`], [`AppState::delete`]).

use crate::api::{self, AddResponse, ApiError, HitOut, SearchResponse};
use crate::layer;
use crate::state::{check_texts, AppState};
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

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

/// One hit's stored fields.
type Fields = serde_json::Map<String, serde_json::Value>;

async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

async fn info(State(s): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let summary = tokio::task::spawn_blocking(move || {
        s.fresh()?.summary(Some(&s.dir)).map_err(ApiError::from)
    })
    .await
    .map_err(join_error)??;
    Ok(Json(summary).into_response())
}

async fn metrics(State(s): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let text = tokio::task::spawn_blocking(move || {
        Ok::<_, ApiError>(s.metrics.render(s.fresh()?.len(), s.inflight()))
    })
    .await
    .map_err(join_error)??;
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}

async fn search(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let t = Instant::now();
    let body = read_body(&headers, body, &s).await?;
    let _slot = s.enter()?;
    let s2 = s.clone();
    // Parsing, the search and the answer's JSON (large for big batches) all on the pool.
    let json = on_pool(&s.pool, move || {
        let (index, docs) = s2.fresh_with_docs()?;
        let embedder = &s2.embedder;
        let req: api::SearchRequest = api::parse(&body)?;
        let mode: rewa_docs::Mode = match &req.mode {
            Some(m) => m.parse()?,
            None => rewa_docs::Mode::Dense,
        };
        let pipeline: Option<rewa::Pipeline> = req.pipeline.map(|p| p.parse()).transpose()?;
        let filter = req
            .filter
            .as_ref()
            .map(rewa_docs::Filter::from_json)
            .transpose()?;
        let texts = req.texts;
        if let Some(t) = &texts {
            check_texts(t)?;
        }
        // vectors: given, or the texts embedded (not for BM25 alone)
        let vectors = match (req.vectors, &texts) {
            (Some(_), Some(_)) => {
                return Err(ApiError::bad_request(
                    "give exactly one of \"vectors\" and \"texts\"",
                ))
            }
            (Some(v), None) => Some(v.into_vectors()?),
            (None, Some(t)) if mode != rewa_docs::Mode::Bm25 => {
                let Some(e) = embedder else {
                    return Err(ApiError::bad_request(
                        "\"texts\" needs a server started with --model DIR; send \"vectors\" (or \"mode\": \"bm25\")",
                    ));
                };
                let refs: Vec<&str> = t.iter().map(String::as_str).collect();
                Some(e.embed(&refs)?)
            }
            (None, Some(_)) => None,
            (None, None) => {
                return Err(ApiError::bad_request(
                    "give exactly one of \"vectors\" and \"texts\"",
                ))
            }
        };
        let queries = vectors
            .map(|v| index.metric().prepare_owned(v))
            .transpose()?;
        let hits = rewa_docs::search(
            &index,
            docs.as_deref(),
            &rewa_docs::Query {
                k: req.k,
                mode,
                pipeline,
                filter: filter.as_ref(),
                vectors: queries.as_ref(),
                texts: texts.as_deref(),
                fusion: req
                    .fusion
                    .as_deref()
                    .map(str::parse)
                    .transpose()?
                    .unwrap_or_default(),
            },
        )?;
        let metric = index.metric();
        let doc_ids = index.doc_ids();
        let only: Option<Vec<String>> = match &req.fields {
            Some(f) if f.iter().any(|x| x == "*") => None,
            Some(f) => Some(f.clone()),
            None => None,
        };
        let shown: Option<Vec<Vec<Option<Fields>>>> =
            match (&req.fields, &docs) {
                (Some(_), Some(d)) => Some(
                    hits.iter()
                        .map(|hs| {
                            let rows: Vec<u32> = hs.iter().map(|h| h.id).collect();
                            d.get(&rows, only.as_deref())
                        })
                        .collect::<rewa_docs::Result<_>>()?,
                ),
                (Some(_), None) => {
                    return Err(ApiError::bad_request(
                        "\"fields\" needs stored documents, and this index has none",
                    ))
                }
                _ => None,
            };
        let results = hits
            .into_iter()
            .enumerate()
            .map(|(qi, hs)| {
                hs.into_iter()
                    .enumerate()
                    .map(|(r, h)| HitOut {
                        id: h.id,
                        score: if mode == rewa_docs::Mode::Dense {
                            metric.score(h.distance)
                        } else {
                            -h.distance
                        },
                        doc_id: doc_ids.map(|d| d[h.id as usize].clone()),
                        fields: shown
                            .as_ref()
                            .map(|s| s[qi][r].clone().unwrap_or_default()),
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
    let body = read_body(&headers, body, &s).await?;
    let s2 = s.clone();
    let answer = tokio::task::spawn_blocking(move || {
        let _slot = s2.enter()?;
        s2.add(&body)
    })
    .await
    .map_err(join_error)??;
    Ok(Json(answer))
}

async fn delete(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<api::DeleteResponse>, ApiError> {
    let body = read_body(&headers, body, &s).await?;
    let s2 = s.clone();
    let answer = tokio::task::spawn_blocking(move || {
        let _slot = s2.enter()?;
        s2.delete(&body)
    })
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

/// The whole body, at most `max_body_bytes`: a declared length above it is refused before
/// anything is read, an undeclared one as soon as it passes the limit. A body not complete
/// within `body_timeout` of its headers is a 408 (and hyper closes the connection, whose
/// request was not read to its end).
async fn read_body(headers: &HeaderMap, body: Body, s: &AppState) -> Result<Bytes, ApiError> {
    let limit = s.max_body_bytes;
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
    let read = tokio::time::timeout(s.body_timeout, axum::body::to_bytes(body, limit));
    let Ok(read) = read.await else {
        return Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request body did not arrive within {} (the server's body timeout)",
                secs(s.body_timeout)
            ),
        ));
    };
    read.map_err(|e| {
        let over = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
        if over {
            too_large()
        } else {
            ApiError::bad_request(format!("reading the request body: {e}"))
        }
    })
}

/// `2 s`, `0.5 s`.
fn secs(d: Duration) -> String {
    format!("{} s", d.as_secs_f64())
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
