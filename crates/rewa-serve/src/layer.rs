//! What wraps every request: the API key, the shutdown check, metrics, and turning a panic
//! into a 500 answer; and the signals that start a graceful stop.

use crate::api::ApiError;
use crate::auth::{self, Access};
use crate::state::AppState;
use axum::extract::{MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

/// What a route needs from the request's key: nothing for `/health` (so load balancers and
/// probes need no secret), the API key for the routes that write, either key for the rest.
fn needs(route: &str) -> Option<Access> {
    match route {
        "/health" => None,
        "/add" | "/delete" => Some(Access::Write),
        _ => Some(Access::Read),
    }
}

/// The middleware around every route (and the 404 / 405 fallbacks): the key, then the
/// shutdown check. The in-flight limit is the handlers', taken once the body is read.
pub(crate) async fn guard(
    State(state): State<Arc<AppState>>,
    matched: Option<MatchedPath>,
    req: Request,
    next: Next,
) -> Response {
    let t = Instant::now();
    let route = matched.as_ref().map_or("unmatched", |m| m.as_str());
    let allowed = match needs(route) {
        Some(need) => state.keys.check(req.headers(), need),
        None => Ok(()),
    };
    let response = if let Err(refused) = allowed {
        auth::refusal(refused)
    } else if state.shutting_down() {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is shutting down",
        )
        .into_response()
    } else {
        run(next, req).await
    };
    state
        .metrics
        .record(route, response.status().as_u16(), t.elapsed());
    response
}

/// Runs the handler; a panic inside it becomes a 500 answer instead of a dropped connection.
async fn run(next: Next, req: Request) -> Response {
    match CatchUnwind(Box::pin(next.run(req))).await {
        Ok(r) => r,
        Err(payload) => ApiError::panic(payload).into_response(),
    }
}

/// A future that catches a panic raised while it is polled.
struct CatchUnwind<F>(Pin<Box<F>>);

impl<F: Future> Future for CatchUnwind<F> {
    type Output = std::thread::Result<F::Output>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let f = self.0.as_mut();
        match catch_unwind(AssertUnwindSafe(|| f.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Err(payload) => Poll::Ready(Err(payload)),
        }
    }
}

/// SIGTERM and SIGINT (Ctrl-C), installed before the server says it listens, so that a
/// signal from then on is a graceful stop rather than the default instant death.
pub(crate) struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl Signals {
    /// Installs the handlers; needs the runtime.
    pub fn install() -> crate::Result<Signals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let err = crate::io("installing signal handlers");
            let term = signal(SignalKind::terminate());
            let int = signal(SignalKind::interrupt());
            match (term, int) {
                (Ok(term), Ok(int)) => Ok(Signals { term, int }),
                (Err(e), _) | (_, Err(e)) => Err(err(e)),
            }
        }
        #[cfg(not(unix))]
        Ok(Signals {})
    }
    /// Waits for either signal.
    pub async fn wait(mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
        #[cfg(not(unix))]
        {
            let _ = &mut self;
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_future_gives_its_payload() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let r = rt.block_on(CatchUnwind(Box::pin(async { panic!("boom") })));
        let e: Result<(), _> = r;
        let payload = e.unwrap_err();
        let err = ApiError::panic(payload);
        assert_eq!(err.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(err.message.contains("boom"), "{}", err.message);
    }
}
