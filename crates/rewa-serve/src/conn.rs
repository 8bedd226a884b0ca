//! Connections: accepting them up to a cap, the idle and header timeout, a graceful stop, and
//! JSON bodies for the errors hyper answers by itself.
//!
//! Each connection is served by hyper's HTTP/1 connection in a task of its own (not
//! `axum::serve`), so that the server decides how many there are and how long each may
//! stay without a request:
//!
//! - **A connection cap.** Past `max_connections` open connections, a new one is answered 503
//!   at once and closed: a crowd of idle or stalled clients costs file descriptors up to the
//!   cap, never all of them, and is told why.
//! - **Idle and header timeout.** hyper's header read timeout starts when a connection begins
//!   waiting for a request (when it opens, and after each answer) and ends when the request's
//!   headers are complete, so one setting closes both idle keep-alive connections and
//!   half-sent headers.
//! - **Body timeout** and the in-flight slots are the handlers' (see `routes`): a slot is taken
//!   only once the body is read, so clients that stall inside their bodies hold no slot.
//!
//! hyper answers a malformed request line or header (400), a URI past 64 KiB (414) and too
//! many or too large headers (431) itself, with an empty body. [`FillErrors`] sits under hyper
//! and gives exactly those answers the `{"error": ..}` body every other error has.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

/// How connections are limited.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// How long a connection may wait for a complete request head.
    pub idle_timeout: Duration,
    /// Open connections at most.
    pub max_connections: usize,
}

/// Connections refused past the cap that may still be draining their request at once; more
/// are dropped without an answer.
const MAX_REFUSING: usize = 64;

/// Accepts and serves connections until `stop` completes, then closes the listener, lets each
/// connection finish the request it is answering, and returns once all are closed.
pub(crate) async fn serve(
    listener: TcpListener,
    app: axum::Router,
    limits: Limits,
    stop: impl Future<Output = ()>,
) {
    let open = Arc::new(Semaphore::new(limits.max_connections));
    let refusing = Arc::new(Semaphore::new(MAX_REFUSING));
    let (stopping, stopped) = watch::channel(());
    tokio::pin!(stop);
    loop {
        let stream = tokio::select! {
            _ = &mut stop => break,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                // Out of file descriptors, or a connection reset before it was accepted:
                // wait a moment rather than spin, and go on.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = open.clone().try_acquire_owned() else {
            if let Ok(p) = refusing.clone().try_acquire_owned() {
                tokio::spawn(refuse(stream, limits.max_connections, p));
            }
            continue;
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let mut stopped = stopped.clone();
        tokio::spawn(async move {
            let mut b = hyper::server::conn::http1::Builder::new();
            b.timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(limits.idle_timeout);
            let io = hyper_util::rt::TokioIo::new(FillErrors::new(stream));
            let conn = b.serve_connection(io, service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stopped.changed() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
            drop(permit);
        });
    }
    drop(listener); // new connections are refused from now on
    let _ = stopping.send(());
    // Every connection gives its permit back when it closes.
    let _ = open.acquire_many(limits.max_connections as u32).await;
}

/// Answers a connection past the cap with a 503 and closes it. The request it may have sent is
/// read (up to a second) before closing, since closing with unread bytes resets the connection
/// and the client might lose the answer.
async fn refuse(mut s: TcpStream, max: usize, _p: tokio::sync::OwnedSemaphorePermit) {
    let body = serde_json::json!({
        "error": format!("too many open connections (the limit is {max}); retry later")
    })
    .to_string();
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        s.write_all(answer.as_bytes()).await?;
        s.shutdown().await?;
        let mut sink = [0u8; 4096];
        let mut n = 0;
        while n < (64 << 10) {
            match tokio::io::AsyncReadExt::read(&mut s, &mut sink).await? {
                0 => break,
                k => n += k,
            }
        }
        Ok::<_, io::Error>(())
    })
    .await;
}

/// A connection's stream that replaces hyper's own empty-bodied error answers (400, 414, 431)
/// with the same answers carrying `{"error": ..}`.
pub(crate) struct FillErrors<S> {
    inner: S,
    /// A replacement being written: its bytes, how many are written, and the length of the
    /// buffer it replaces (reported to hyper as written once all of it is).
    pending: Option<(Vec<u8>, usize, usize)>,
}

impl<S> FillErrors<S> {
    pub fn new(inner: S) -> Self {
        FillErrors {
            inner,
            pending: None,
        }
    }
}

/// The answer to write instead of `buf`, if `buf` is one of hyper's empty error answers.
fn filled(buf: &[u8]) -> Option<Vec<u8>> {
    let message = match buf.get(..12)? {
        b"HTTP/1.1 400" => "bad request: the request line or a header is malformed",
        b"HTTP/1.1 414" => "the request's URI is too long (the limit is 65534 bytes)",
        b"HTTP/1.1 431" => "the request's headers are too large (or more than 100)",
        _ => return None,
    };
    // A head alone (ending in its blank line) with no body.
    let head = std::str::from_utf8(buf.strip_suffix(b"\r\n\r\n")?).ok()?;
    if head.contains("\r\n\r\n") {
        return None;
    }
    let mut lines: Vec<&str> = head.split("\r\n").collect();
    let cl = lines.iter().position(|l| {
        l.split_once(':')
            .is_some_and(|(k, v)| k.eq_ignore_ascii_case("content-length") && v.trim() == "0")
    })?;
    lines.remove(cl);
    let body = serde_json::json!({ "error": message }).to_string();
    let mut out = lines.join("\r\n");
    out.push_str(&format!(
        "\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    ));
    Some(out.into_bytes())
}

impl<S: AsyncRead + Unpin> AsyncRead for FillErrors<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FillErrors<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let me = &mut *self;
        if me.pending.is_none() {
            match filled(buf) {
                Some(out) => me.pending = Some((out, 0, buf.len())),
                None => return Pin::new(&mut me.inner).poll_write(cx, buf),
            }
        }
        // invariant: set just above, or by an earlier call still writing it
        let (out, done, replaces) = me.pending.as_mut().expect("a replacement");
        while *done < out.len() {
            let n = ready!(Pin::new(&mut me.inner).poll_write(cx, &out[*done..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *done += n;
        }
        let n = *replaces;
        me.pending = None;
        Poll::Ready(Ok(n))
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    // Not vectored: hyper then hands each answer's head over in one buffer.
    fn is_write_vectored(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_empty_protocol_errors_get_a_body() {
        let head =
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: x\r\n\r\n";
        let out = String::from_utf8(filled(head).unwrap()).unwrap();
        let (h, body) = out.split_once("\r\n\r\n").unwrap();
        assert_eq!(
            h,
            format!(
                "HTTP/1.1 431 Request Header Fields Too Large\r\ndate: x\r\ncontent-type: application/json\r\ncontent-length: {}",
                body.len()
            )
        );
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert!(v["error"]
            .as_str()
            .unwrap()
            .contains("headers are too large"));
        // ours (a body), other statuses, and partial heads pass untouched
        assert!(filled(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 2\r\n\r\n{}").is_none());
        assert!(filled(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").is_none());
        assert!(filled(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n").is_none());
    }
}
