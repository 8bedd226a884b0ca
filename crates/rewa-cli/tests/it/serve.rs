// `rewa serve` driven over real sockets: every route and error status, searches equal to
// `rewa search`, adds while searching, SIGTERM with requests in flight, SIGKILL inside an add.

use crate::common::{json, ok, ok_args};
use serde_json::{json as j, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(30);

/// A running `rewa serve` and the lines of its stderr.
struct Server {
    child: Child,
    addr: String,
    lines: Receiver<String>,
}

impl Server {
    /// Starts `rewa serve --index idx --addr 127.0.0.1:0 <args>` in `dir` and waits for the
    /// address it prints.
    fn start(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_rewa"));
        cmd.args(["serve", "--index", "idx", "--addr", "127.0.0.1:0"])
            .args(args)
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let err = child.stderr.take().unwrap();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(|l| l.ok()) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut s = Server {
            child,
            addr: String::new(),
            lines,
        };
        let line = s.wait_line("listening on http://");
        s.addr = line
            .split("http://")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .unwrap()
            .to_string();
        s
    }
    /// Waits (bounded) for a stderr line holding `needle`.
    fn wait_line(&mut self, needle: &str) -> String {
        let t = Instant::now();
        let mut seen = Vec::new();
        loop {
            let left = TIMEOUT.saturating_sub(t.elapsed());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.contains(needle) => return l,
                Ok(l) => seen.push(l),
                Err(e) => panic!(
                    "no stderr line with {needle:?} ({e}); stderr:\n{}",
                    seen.join("\n")
                ),
            }
        }
    }
    fn req(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        http(&self.addr, method, path, body)
    }
    /// POSTs a JSON body; status and parsed answer.
    fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let (status, text) = self.req("POST", path, &body.to_string());
        let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text:?}"));
        (status, v)
    }
    fn metric(&self, name: &str) -> f64 {
        let (status, text) = self.req("GET", "/metrics", "");
        assert_eq!(status, 200);
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {text}"))
    }
    fn signal(&self, sig: &str) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
            .success());
    }
    /// Waits (bounded) for the process to exit; its exit code.
    fn exit_code(&mut self) -> Option<i32> {
        let t = Instant::now();
        while t.elapsed() < TIMEOUT {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.code();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("the server did not exit");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn connect(addr: &str) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s
}

/// One request on a fresh connection (`Connection: close`); status and body.
fn http(addr: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    http_with(addr, method, path, "", body)
}

/// [`http`] with extra header lines (each ending in `\r\n`).
fn http_with(addr: &str, method: &str, path: &str, headers: &str, body: &str) -> (u16, String) {
    let mut s = connect(addr);
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n{headers}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    response(s)
}

/// Reads a whole answer until the server closes the connection.
fn response(mut s: TcpStream) -> (u16, String) {
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {raw:?}"));
    (status, body.to_string())
}

/// 500 vectors of dim 32 in `idx` (sign then exact rerank), and queries `a/queries_same.npy`.
fn setup(dir: &Path) {
    ok(
        "synth --classes 10 --per-class 50 --dim 32 --new-classes 0 --seed 1 --out a",
        dir,
    );
    ok(
        "build --base a/base.npy --pipeline hadamard64+sign:100,exact:10 --out idx",
        dir,
    );
}

fn queries(dir: &Path, n: usize) -> Vec<Vec<f32>> {
    let q = rewa::io::read_vectors(&dir.join("a/queries_same.npy")).unwrap();
    (0..n.min(q.len())).map(|i| q.row(i).to_vec()).collect()
}

/// (id, score) per hit per query of a `/search` answer.
fn hits(v: &Value) -> Vec<Vec<(u64, f32)>> {
    v["results"]
        .as_array()
        .unwrap_or_else(|| panic!("no results in {v}"))
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|h| {
                    (
                        h["id"].as_u64().unwrap(),
                        h["score"].as_f64().unwrap() as f32,
                    )
                })
                .collect()
        })
        .collect()
}

/// (id, score) per hit per query of `rewa search` TSV.
fn cli_hits(tsv: &str, n: usize) -> Vec<Vec<(u64, f32)>> {
    let mut out = vec![Vec::new(); n];
    for l in tsv.lines().skip(1) {
        let f: Vec<&str> = l.split('\t').collect();
        let q: usize = f[0].parse().unwrap();
        if q >= n {
            continue;
        }
        out[q].push((f[2].parse().unwrap(), f[3].parse().unwrap()));
    }
    out
}

fn error_of(v: &Value) -> &str {
    v["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error in {v}"))
}

#[test]
fn serve_routes_answer_as_the_cli_does_and_refuse_bad_requests_with_json() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    setup(d);
    let s = Server::start(d, &["--max-body-mb", "0.01", "--threads", "2"], &[]);

    let (status, body) = s.req("GET", "/health", "");
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ok"}"#));
    let (status, body) = s.req("GET", "/info", "");
    assert_eq!(status, 200);
    let info: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(info, json("info --index idx", d));

    // ids and scores equal `rewa search`'s, with the default pipeline and an override
    let q = queries(d, 5);
    let (status, v) = s.post("/search", &j!({"vectors": q, "k": 7}));
    assert_eq!(status, 200, "{v}");
    assert!(v["took_ms"].as_f64().unwrap() >= 0.0);
    let cli = ok("search --index idx --queries a/queries_same.npy --k 7", d);
    let want = cli_hits(&cli, 5);
    assert_eq!(hits(&v), want);
    assert!(want.iter().all(|h| h.len() == 7));
    let (status, v) = s.post(
        "/search",
        &j!({"vectors": q, "k": 3, "pipeline": "exact:3"}),
    );
    assert_eq!(status, 200, "{v}");
    let cli = ok(
        "search --index idx --queries a/queries_same.npy --k 3 --pipeline exact:3",
        d,
    );
    assert_eq!(hits(&v), cli_hits(&cli, 5));
    // k defaults to 10
    let (_, v) = s.post("/search", &j!({"vectors": [q[0]]}));
    assert_eq!(hits(&v)[0].len(), 10);

    // 400s carry the library's words
    let bad: Vec<(String, &str)> = vec![
        ("{\"vectors\": [[1, 2".into(), "bad JSON body"),
        ("[1, 2]".into(), "bad JSON body"),
        (r#"{"k": 3}"#.into(), "vectors"), // search: "exactly one of"; add: "missing field"
        (
            r#"{"vectors": [[1]], "kk": 3}"#.into(),
            "unknown field `kk`",
        ),
        (
            r#"{"vectors": [[1, 2], [3]]}"#.into(),
            "vector 1: dimension mismatch: expected 2, got 1",
        ),
        (
            r#"{"vectors": [[1, 2]]}"#.into(),
            "dimension mismatch: expected 32, got 2",
        ),
        (r#"{"vectors": []}"#.into(), "zero vectors"),
        (
            r#"{"vectors": [[]]}"#.into(),
            "dimension must be at least 1",
        ),
        (
            j!({"vectors": [q[0]], "k": 0}).to_string(),
            "k must be at least 1",
        ),
        (
            j!({"vectors": [q[0]], "k": -1}).to_string(),
            "bad JSON body",
        ),
        (
            j!({"vectors": [q[0]], "pipeline": "nope:3"}).to_string(),
            "invalid input",
        ),
        (
            j!({"vectors": [q[0]], "k": 50}).to_string(),
            "fewer than k = 50",
        ),
    ];
    for (body, needle) in &bad {
        for route in ["/search", "/add"] {
            if route == "/add" && (body.contains("\"k\"") || body.contains("pipeline")) {
                continue;
            }
            let (status, text) = s.req("POST", route, body);
            let v: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(status, 400, "{route} {body}: {text}");
            assert!(error_of(&v).contains(needle), "{route} {body}: {text}");
        }
    }
    // a row of infinities, as JSON cannot say NaN: numbers beyond f32
    let (status, v) = s.post("/search", &j!({"vectors": [vec![1e39f64; 32]]}));
    assert_eq!(status, 400);
    assert!(error_of(&v).contains("NaN or infinity"), "{v}");

    // 404, 405: JSON too
    let (status, text) = s.req("GET", "/nope", "");
    assert_eq!(status, 404);
    assert!(error_of(&serde_json::from_str(&text).unwrap()).contains("no route GET /nope"));
    for (method, path) in [("GET", "/search"), ("POST", "/health"), ("DELETE", "/add")] {
        let (status, text) = s.req(method, path, "");
        assert_eq!(status, 405, "{method} {path}");
        assert!(error_of(&serde_json::from_str(&text).unwrap()).contains(method));
    }

    // 413: a declared length above --max-body-mb is refused before the body is sent
    let mut c = connect(&s.addr);
    write!(
        c,
        "POST /search HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: 20000\r\n\r\n"
    )
    .unwrap();
    let (status, text) = response(c);
    assert_eq!(status, 413, "{text}");
    assert!(error_of(&serde_json::from_str(&text).unwrap()).contains("10485 bytes"));

    // the metrics count what happened
    let (status, text) = s.req("GET", "/metrics", "");
    assert_eq!(status, 200);
    for line in [
        "rewa_http_requests_total{route=\"/health\",status=\"200\"} 1",
        "rewa_http_requests_total{route=\"/search\",status=\"200\"} 3",
        "rewa_http_requests_total{route=\"/search\",status=\"413\"} 1",
        "rewa_http_requests_total{route=\"unmatched\",status=\"404\"} 1",
        "rewa_http_request_duration_seconds_count{route=\"/info\"} 1",
        "rewa_index_vectors 500",
        "rewa_inflight_requests 0",
    ] {
        assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
    }
    assert!(
        text.contains("rewa_http_request_duration_seconds_bucket{route=\"/search\",le=\"+Inf\"}")
    );
}

#[test]
fn serve_adds_while_searching_and_searches_see_the_new_ids() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    setup(d);
    let s = Server::start(d, &[], &[]);
    let q = queries(d, 30);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let searchers: Vec<_> = (0..2)
        .map(|i| {
            let (addr, stop, q) = (s.addr.clone(), stop.clone(), q[i..i + 2].to_vec());
            std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) || n < 5 {
                    let (status, text) =
                        http(&addr, "POST", "/search", &j!({"vectors": q}).to_string());
                    assert_eq!(status, 200, "a search failed during adds: {text}");
                    n += 1;
                }
                n
            })
        })
        .collect();
    // three adds of ten queries each: ids continue from 500
    for (i, chunk) in q.chunks(10).enumerate() {
        let (status, v) = s.post("/add", &j!({"vectors": chunk}));
        assert_eq!(status, 200, "{v}");
        assert_eq!(v, j!({"count": 510 + 10 * i, "first_id": 500 + 10 * i}));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for h in searchers {
        assert!(h.join().unwrap() >= 5);
    }
    // each added query is now its own nearest neighbour (cosine 1)
    let (status, v) = s.post("/search", &j!({"vectors": q, "k": 1}));
    assert_eq!(status, 200);
    for (i, h) in hits(&v).iter().enumerate() {
        assert_eq!(h[0].0, 500 + i as u64, "query {i}: {h:?}");
        assert!((h[0].1 - 1.0).abs() < 1e-5, "query {i}: {h:?}");
    }
    assert_eq!(s.metric("rewa_index_vectors"), 530.0);
    assert_eq!(s.metric("rewa_index_saves_total"), 3.0);
    let (_, info) = s.req("GET", "/info", "");
    assert_eq!(serde_json::from_str::<Value>(&info).unwrap()["count"], 530);
    // on disk too, for any other reader
    assert_eq!(json("info --index idx", d)["count"], 530);
    // deletes: the deleted ids never come back, ids of later adds go on from 530
    let (status, v) = s.post("/delete", &j!({"ids": [500, 501]}));
    assert_eq!((status, v), (200, j!({"deleted": 2, "count": 528})));
    let (status, v) = s.post("/delete", &j!({"ids": [500]}));
    assert_eq!((status, v), (200, j!({"deleted": 0, "count": 528})));
    let (status, v) = s.post("/delete", &j!({"ids": [530]}));
    assert_eq!(status, 400, "{v}");
    let (_, v) = s.post("/search", &j!({"vectors": q[..2], "k": 3}));
    assert!(
        hits(&v).iter().flatten().all(|h| h.0 != 500 && h.0 != 501),
        "{v}"
    );
    let (status, v) = s.post("/add", &j!({"vectors": q[..1]}));
    assert_eq!((status, v), (200, j!({"count": 529, "first_id": 530})));
    assert_eq!(json("info --index idx", d)["deleted"], 2);
}

#[test]
fn serve_concurrent_adds_get_distinct_ids_in_one_index() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    setup(d);
    let s = Server::start(d, &[], &[]);
    let q = queries(d, 40);
    // eight clients add five vectors each at once (adds that queue are saved together)
    let adders: Vec<_> = q
        .chunks(5)
        .map(|chunk| {
            let (addr, body) = (s.addr.clone(), j!({ "vectors": chunk }).to_string());
            std::thread::spawn(move || {
                let (status, text) = http(&addr, "POST", "/add", &body);
                assert_eq!(status, 200, "{text}");
                let v: Value = serde_json::from_str(&text).unwrap();
                v["first_id"].as_u64().unwrap()
            })
        })
        .collect();
    let firsts: Vec<u64> = adders.into_iter().map(|h| h.join().unwrap()).collect();
    let mut sorted = firsts.clone();
    sorted.sort();
    assert_eq!(sorted, (0..8).map(|i| 500 + 5 * i).collect::<Vec<u64>>());
    // each client's vectors sit at the ids it was given
    let (_, v) = s.post("/search", &j!({"vectors": q, "k": 1}));
    for (i, h) in hits(&v).iter().enumerate() {
        assert_eq!(h[0].0, firsts[i / 5] + (i % 5) as u64, "vector {i}");
    }
    let saves = s.metric("rewa_index_saves_total");
    assert!((1.0..=8.0).contains(&saves), "{saves} saves for 8 adds");
    assert_eq!(json("info --index idx", d)["count"], 540);
}

#[test]
fn serve_add_waits_for_another_writer_or_answers_503_then_adds_on_top_of_it() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    setup(d);
    let s = Server::start(d, &["--wait-lock", "0"], &[]);
    // `rewa add` holds the index's writer lock, paused inside its save
    let mut cli = Command::new(env!("CARGO_BIN_EXE_rewa"))
        .args(["add", "--index", "idx", "--base", "a/base.npy"])
        .env("REWA_SAVE_PAUSE", "data:1500")
        .current_dir(d)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(cli.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains("paused:data") {
        line.clear();
        assert!(
            err.read_line(&mut line).unwrap() > 0,
            "rewa add never paused"
        );
    }
    let q = queries(d, 1);
    let (status, v) = s.post("/add", &j!({ "vectors": q }));
    assert_eq!(status, 503, "{v}");
    let want = format!("being written by process {}", cli.id());
    assert!(error_of(&v).contains(&want), "{v}");
    assert!(cli.wait().unwrap().success());
    // the next add starts from what the other writer saved
    let (status, v) = s.post("/add", &j!({ "vectors": q }));
    assert_eq!((status, v), (200, j!({"count": 1001, "first_id": 1000})));
}

#[test]
fn serve_limits_requests_in_flight_and_finishes_them_on_sigterm() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    setup(d);
    let mut s = Server::start(d, &["--max-inflight", "1", "--wait-lock", "30"], &[]);
    // An add in flight: it waits for the writer lock, held here until the end.
    let held = rewa::index::WriteLock::acquire(&d.join("idx"), Duration::ZERO).unwrap();
    let (addr, body) = (s.addr.clone(), j!({"vectors": queries(d, 1)}).to_string());
    let adder = std::thread::spawn(move || http(&addr, "POST", "/add", &body));
    let t0 = Instant::now();
    while s.metric("rewa_inflight_requests") < 1.0 {
        assert!(t0.elapsed() < TIMEOUT, "the add never started");
        std::thread::sleep(Duration::from_millis(5));
    }
    // the limit is reached: another search, add or delete is 429; health and metrics answer
    for (route, body) in [
        ("/search", j!({"vectors": queries(d, 1)})),
        ("/add", j!({"vectors": queries(d, 1)})),
        ("/delete", j!({"ids": [1]})),
    ] {
        let (status, v) = s.post(route, &body);
        assert_eq!(status, 429, "{route}: {v}");
        assert!(error_of(&v).contains("too many requests"), "{v}");
    }
    assert_eq!(s.req("GET", "/health", "").0, 200);

    // A client that has sent part of its request line when the stop begins.
    let mut late = connect(&s.addr);
    write!(late, "GET /hea").unwrap();
    // SIGTERM: the server stops accepting, but the add in flight completes
    s.signal("-TERM");
    s.wait_line("shutting down: finishing 1 requests in flight");
    // a connection made now is refused, reset, or (accepted in the instant before the
    // listener closed) answered 503
    let after = TcpStream::connect(&s.addr).and_then(|mut c| {
        c.set_read_timeout(Some(TIMEOUT))?;
        write!(
            c,
            "GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        )?;
        let mut raw = String::new();
        c.read_to_string(&mut raw)?;
        Ok(raw)
    });
    if let Ok(raw) = after {
        assert!(
            raw.is_empty() || raw.starts_with("HTTP/1.1 503"),
            "a connection made after SIGTERM was served: {raw:?}"
        );
    }
    write!(
        late,
        "lth HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )
    .ok();
    let mut raw = String::new();
    let _ = late.read_to_string(&mut raw);
    assert!(
        raw.is_empty() || raw.starts_with("HTTP/1.1 503"),
        "a request begun during the stop: {raw:?}"
    );
    drop(held);
    let (status, text) = adder.join().unwrap();
    assert_eq!(status, 200, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v, j!({"count": 501, "first_id": 500}));
    assert_eq!(s.exit_code(), Some(0));
    s.wait_line("stopped");
}

/// A request's status line and body, read until the server closes the connection (or an
/// error, such as a reset, ends the read: what was read so far).
fn drain(mut c: TcpStream) -> String {
    let mut raw = Vec::new();
    let _ = c.read_to_end(&mut raw);
    String::from_utf8_lossy(&raw).into_owned()
}

#[test]
fn serve_stalled_clients_hold_no_slot_and_are_closed_after_the_timeouts() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    setup(d);
    let s = Server::start(
        d,
        &[
            "--max-inflight",
            "2",
            "--body-timeout",
            "1",
            "--idle-timeout",
            "1",
        ],
        &[],
    );
    // Eight clients (four times --max-inflight) send their headers and one byte of a
    // 100-byte body (or a chunked body that never ends), then nothing.
    let stalled: Vec<TcpStream> = (0..8)
        .map(|i| {
            let mut c = connect(&s.addr);
            if i % 2 == 0 {
                write!(c, "POST /search HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n{{").unwrap();
            } else {
                write!(c, "POST /add HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n1\r\n{{\r\n").unwrap();
            }
            c
        })
        .collect();
    // Searches still answer, while the stalled bodies are being waited for.
    let q = queries(d, 1);
    for _ in 0..20 {
        let (status, v) = s.post("/search", &j!({"vectors": q, "k": 3}));
        assert_eq!(status, 200, "{v}");
    }
    // Each stalled request gets 408 after --body-timeout, and its connection is closed.
    for c in stalled {
        c.set_read_timeout(Some(TIMEOUT)).unwrap();
        let raw = drain(c);
        assert!(raw.starts_with("HTTP/1.1 408"), "{raw:?}");
        let body = raw.split_once("\r\n\r\n").unwrap().1;
        let v: Value = serde_json::from_str(body).unwrap();
        assert!(error_of(&v).contains("did not arrive within 1 s"), "{v}");
    }
    // Half-sent headers, and a connection that never sends anything, are closed after
    // --idle-timeout (a read that timed out would be an error, not an empty answer).
    let mut half = connect(&s.addr);
    write!(half, "POST /search HTTP/1.1\r\nHost: t\r\n").unwrap();
    let silent = connect(&s.addr);
    for mut c in [half, silent] {
        let mut raw = String::new();
        c.read_to_string(&mut raw)
            .expect("the connection was closed by the server");
        assert_eq!(raw, "");
    }
    // A keep-alive connection idle after its answer is closed too.
    let mut kept = connect(&s.addr);
    write!(kept, "GET /health HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let mut raw = String::new();
    kept.read_to_string(&mut raw)
        .expect("the idle connection was closed by the server");
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw:?}");
    assert!(raw.ends_with(r#"{"status":"ok"}"#), "{raw:?}");
}

#[test]
fn serve_caps_open_connections_and_frees_a_place_when_one_closes() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    setup(d);
    let s = Server::start(d, &["--max-connections", "3"], &[]);
    let idle: Vec<TcpStream> = (0..3).map(|_| connect(&s.addr)).collect();
    // the fourth is answered 503 at once and closed
    let (status, text) = http(&s.addr, "GET", "/health", "");
    assert_eq!(status, 503, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert!(
        error_of(&v).contains("too many open connections (the limit is 3)"),
        "{v}"
    );
    // one of the three goes away: its place is free again
    drop(idle);
    let t0 = Instant::now();
    loop {
        let (status, text) = http(&s.addr, "GET", "/health", "");
        if status == 200 {
            break;
        }
        assert_eq!(status, 503, "{text}");
        assert!(t0.elapsed() < TIMEOUT, "no place freed");
        std::thread::sleep(Duration::from_millis(10));
    }
    // settings out of range are refused at start
    for (args, words) in [
        (
            &["--threads", "100000"][..],
            "--threads must be between 1 and",
        ),
        (
            &["--max-connections", "0"][..],
            "--max-connections must be at least 1",
        ),
        (
            &["--idle-timeout", "0"][..],
            "--idle-timeout must be a number of seconds > 0",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_rewa"))
            .args(["serve", "--index", "idx", "--addr", "127.0.0.1:0"])
            .args(args)
            .current_dir(d)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(words), "{args:?}: {err}");
    }
}

#[test]
fn serve_answers_protocol_errors_with_json_bodies() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    setup(d);
    let s = Server::start(d, &[], &[]);
    let long_uri = format!("/{}", "a".repeat(70_000));
    let many_headers: String = (0..150).map(|i| format!("X-H{i}: v\r\n")).collect();
    for (raw, status, words) in [
        ("GARBAGE\r\n\r\n".to_string(), 400, "malformed"),
        (
            "GET /health HTTP/1.1\r\nHost: t\r\nBad Header\r\n\r\n".to_string(),
            400,
            "malformed",
        ),
        (
            format!("GET {long_uri} HTTP/1.1\r\nHost: t\r\n\r\n"),
            414,
            "URI is too long",
        ),
        (
            format!("GET /health HTTP/1.1\r\nHost: t\r\n{many_headers}\r\n"),
            431,
            "headers are too large",
        ),
    ] {
        let mut c = connect(&s.addr);
        c.write_all(raw.as_bytes()).unwrap();
        let (got, body) = response(c);
        assert_eq!(got, status, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body:?}"));
        assert!(error_of(&v).contains(words), "{v}");
    }
    // and the server goes on
    assert_eq!(s.req("GET", "/health", "").0, 200);
}

#[test]
fn serve_sees_deletes_and_adds_made_by_the_cli_while_it_runs() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    setup(d);
    let s = Server::start(d, &[], &[]);
    let q = queries(d, 2);
    let (_, v) = s.post("/search", &j!({"vectors": [q[0]], "k": 1}));
    let top = hits(&v)[0][0].0;
    // `rewa delete` while the server runs: the next answers no longer hold the id
    std::fs::write(d.join("del.txt"), format!("{top}\n")).unwrap();
    ok("delete --index idx --ids del.txt", d);
    let (_, v) = s.post("/search", &j!({"vectors": [q[0]], "k": 10}));
    assert!(hits(&v)[0].iter().all(|h| h.0 != top), "{v}");
    let (_, info) = s.req("GET", "/info", "");
    assert_eq!(serde_json::from_str::<Value>(&info).unwrap()["count"], 499);
    assert_eq!(s.metric("rewa_index_vectors"), 499.0);
    // `rewa add`: the new rows are found at once
    let two = rewa::Vectors::new(32, q.concat()).unwrap();
    rewa::io::write_npy_f32(&d.join("two.npy"), &two).unwrap();
    ok("add --index idx --base two.npy", d);
    let (_, v) = s.post("/search", &j!({"vectors": q, "k": 1}));
    let h = hits(&v);
    assert_eq!((h[0][0].0, h[1][0].0), (500, 501), "{v}");
    assert_eq!(s.metric("rewa_index_vectors"), 501.0);
    assert_eq!(s.metric("rewa_index_reloads_total"), 2.0);
    // the server's own add goes on from the CLI's ids
    let (status, v) = s.post("/add", &j!({"vectors": [q[0]]}));
    assert_eq!((status, v), (200, j!({"count": 502, "first_id": 502})));
    assert_eq!(json("info --index idx", d)["count"], 502);
}

#[test]
fn serve_and_cli_adds_interleaved_never_give_an_id_twice() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    setup(d);
    let s = Server::start(d, &["--wait-lock", "60"], &[]);
    let q = queries(d, 16);
    // rows 0..8 by the CLI (four adds of two), rows 8..16 by the server, at the same time
    for i in 0..4 {
        let v = rewa::Vectors::new(32, q[2 * i..2 * i + 2].concat()).unwrap();
        rewa::io::write_npy_f32(&d.join(format!("c{i}.npy")), &v).unwrap();
    }
    let dir = d.to_path_buf();
    let cli = std::thread::spawn(move || {
        for i in 0..4 {
            ok(
                &format!("add --index idx --base c{i}.npy --wait-lock 60"),
                &dir,
            );
        }
    });
    let mut firsts = Vec::new();
    for i in 0..4 {
        let (status, v) = s.post("/add", &j!({"vectors": q[8 + 2 * i..10 + 2 * i]}));
        assert_eq!(status, 200, "{v}");
        firsts.push(v["first_id"].as_u64().unwrap());
    }
    cli.join().unwrap();
    // every row is its own nearest neighbour, at an id of its own
    let (_, v) = s.post("/search", &j!({"vectors": q, "k": 1}));
    let ids: Vec<u64> = hits(&v).iter().map(|h| h[0].0).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(sorted, (500..516).collect::<Vec<u64>>(), "{ids:?}");
    for (i, first) in firsts.iter().enumerate() {
        assert_eq!(ids[8 + 2 * i], *first, "{ids:?} {firsts:?}");
        assert_eq!(ids[9 + 2 * i], first + 1, "{ids:?} {firsts:?}");
    }
    assert_eq!(json("info --index idx", d)["count"], 516);
}

#[test]
fn serve_with_api_keys_refuses_requests_without_the_right_one() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    setup(d);
    let s = Server::start(
        d,
        &["--read-only-key", "r-key"],
        &[("REWA_API_KEY", "w-key")],
    );
    let search = j!({"vectors": queries(d, 1), "k": 2}).to_string();
    let add = j!({"vectors": queries(d, 1)}).to_string();
    let del = j!({"ids": [3]}).to_string();
    let none = "";
    let w = "api-key: w-key\r\n";
    let r = "Authorization: Bearer r-key\r\n";
    let wrong = "api-key: w-ke\r\n";
    for (method, path, body, headers, status, words) in [
        ("GET", "/health", "", none, 200, ""),
        (
            "POST",
            "/search",
            &search[..],
            none,
            401,
            "needs an API key",
        ),
        ("POST", "/search", &search[..], wrong, 401, "wrong API key"),
        ("POST", "/search", &search[..], r, 200, ""),
        ("POST", "/search", &search[..], w, 200, ""),
        ("GET", "/info", "", none, 401, "needs an API key"),
        ("GET", "/info", "", r, 200, ""),
        ("GET", "/metrics", "", none, 401, "needs an API key"),
        ("GET", "/nope", "", none, 401, "needs an API key"),
        ("POST", "/add", &add[..], none, 401, "needs an API key"),
        ("POST", "/add", &add[..], r, 403, "read-only key"),
        ("POST", "/delete", &del[..], r, 403, "read-only key"),
        ("POST", "/add", &add[..], w, 200, ""),
        (
            "POST",
            "/delete",
            &del[..],
            "Authorization: Bearer w-key\r\n",
            200,
            "",
        ),
    ] {
        let (got, text) = http_with(&s.addr, method, path, headers, body);
        assert_eq!(got, status, "{method} {path} {headers:?}: {text}");
        if !words.is_empty() {
            let v: Value = serde_json::from_str(&text).unwrap();
            assert!(error_of(&v).contains(words), "{path}: {v}");
        }
    }
    assert_eq!(json("info --index idx", d)["count"], 500); // one added, one deleted
    let out = Command::new(env!("CARGO_BIN_EXE_rewa"))
        .args([
            "serve",
            "--index",
            "idx",
            "--addr",
            "127.0.0.1:0",
            "--api-key",
            " ",
        ])
        .current_dir(d)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--api-key is empty"), "{err}");
    // --help says what binding beyond loopback means
    let help = ok("serve --help", d);
    for words in [
        "Exposure: anyone who can reach --addr can search, add and delete unless --api-key is set",
        "REWA_API_KEY",
        "REWA_READ_ONLY_KEY",
    ] {
        assert!(help.contains(words), "{words:?} not in\n{help}");
    }
}

#[test]
fn serve_killed_inside_an_add_keeps_exactly_the_acknowledged_adds() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    setup(d);
    let q = queries(d, 30);
    // Every save pauses (announcing `paused:data`) with its new files written and the
    // manifest not yet replaced.
    let mut s = Server::start(d, &[], &[("REWA_SAVE_PAUSE", "data:1000")]);
    let (status, v) = s.post("/add", &j!({"vectors": q[0..10]}));
    assert_eq!((status, &v), (200, &j!({"count": 510, "first_id": 500})));
    s.wait_line("paused:data");
    // the second add is killed inside its save, before it was acknowledged
    let addr = s.addr.clone();
    let body = j!({"vectors": q[10..20]}).to_string();
    let adder = std::thread::spawn(move || {
        let mut c = connect(&addr);
        write!(
            c,
            "POST /add HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut raw = String::new();
        let _ = c.read_to_string(&mut raw);
        raw
    });
    s.wait_line("paused:data");
    // searches go on while the add holds the writer lock
    let (status, v) = s.post("/search", &j!({"vectors": [q[5]], "k": 1}));
    assert_eq!(status, 200);
    assert_eq!(hits(&v)[0][0].0, 505);
    s.child.kill().unwrap(); // SIGKILL
    s.child.wait().unwrap();
    assert!(
        adder.join().unwrap().is_empty(),
        "the killed add was answered"
    );

    // restart: the acknowledged add is there, the killed one is not
    let s = Server::start(d, &[], &[("REWA_SAVE_PAUSE", "manifest:60000")]);
    assert_eq!(s.metric("rewa_index_vectors"), 510.0);
    let (_, v) = s.post("/search", &j!({"vectors": q[0..20], "k": 1}));
    for (i, h) in hits(&v).iter().enumerate() {
        if i < 10 {
            assert_eq!(h[0].0, 500 + i as u64);
        } else {
            assert!(
                h[0].0 < 510,
                "query {i} found an id of the killed add: {h:?}"
            );
        }
    }
    // killed after the new manifest is in place but before the answer: the add is whole
    let addr = s.addr.clone();
    let body = j!({"vectors": q[20..30]}).to_string();
    let _adder = std::thread::spawn(move || {
        // never answered: the server dies first
        let mut c = connect(&addr);
        let _ = write!(
            c,
            "POST /add HTTP/1.1\r\nHost: test\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let _ = c.read_to_end(&mut Vec::new());
    });
    let mut s = s;
    s.wait_line("paused:manifest");
    s.child.kill().unwrap();
    s.child.wait().unwrap();
    let s = Server::start(d, &[], &[]);
    assert_eq!(s.metric("rewa_index_vectors"), 520.0);
    let (_, v) = s.post("/search", &j!({"vectors": q[20..30], "k": 1}));
    for (i, h) in hits(&v).iter().enumerate() {
        assert_eq!(h[0].0, 510 + i as u64);
    }
    // and the directory is a clean index for the CLI
    assert_eq!(json("info --index idx", d)["count"], 520);
}

#[test]
fn serve_with_a_model_searches_by_text_as_by_its_embedding() {
    let Some(model) = crate::embed::minilm() else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let queries = four_docs_two_queries(d);
    let m = model.display().to_string();
    ok(
        &format!("embed --model {m} --input docs.txt --out docs.npy"),
        d,
    );
    ok(&format!("embed --model {m} --input q.txt --out q.npy"), d);
    ok("build --base docs.npy --pipeline exact:4 --out idx", d);

    let s = Server::start(d, &["--model", &m], &[]);
    let (st, by_text) = s.post("/search", &j!({"texts": queries, "k": 4}));
    assert_eq!(st, 200, "{by_text}");
    let (a, b) = (hits(&by_text), by_vectors(&s, d, "q.npy"));
    for (ra, rb) in a.iter().zip(&b) {
        let ids = |r: &Vec<(u64, f32)>| r.iter().map(|h| h.0).collect::<Vec<_>>();
        assert_eq!(ids(ra), ids(rb));
        for (ha, hb) in ra.iter().zip(rb) {
            assert!((ha.1 - hb.1).abs() < 1e-5, "{ha:?} vs {hb:?}");
        }
    }
    assert_eq!((a[0][0].0, a[1][0].0), (0, 2), "{by_text}");
    for (body, words) in [
        (j!({"texts": [], "k": 2}), "zero texts"),
        (j!({"texts": ["ok", "  "], "k": 2}), "text 1 is empty"),
        (
            j!({"texts": ["x"], "vectors": [vec![0.0f32; 384]], "k": 2}),
            "exactly one of",
        ),
        (j!({"k": 2}), "exactly one of"),
    ] {
        let (st, v) = s.post("/search", &body);
        assert_eq!(st, 400, "{v}");
        assert!(error_of(&v).contains(words), "{v}");
    }
    drop(s);

    // without --model, texts are refused; a model of another dimension refuses to start
    let s = Server::start(d, &[], &[]);
    let (st, v) = s.post("/search", &j!({"texts": ["x"], "k": 2}));
    assert_eq!(st, 400, "{v}");
    assert!(error_of(&v).contains("--model"), "{v}");
    drop(s);
    ok(
        "synth --classes 2 --per-class 5 --dim 32 --new-classes 0 --out small",
        d,
    );
    ok(
        "build --base small/base.npy --pipeline exact:4 --out idx32",
        d,
    );
    let out = Command::new(env!("CARGO_BIN_EXE_rewa"))
        .args([
            "serve",
            "--index",
            "idx32",
            "--addr",
            "127.0.0.1:0",
            "--model",
            &m,
        ])
        .current_dir(d)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("384-dimensional") && err.contains("32"),
        "{err}"
    );
}

#[test]
fn serve_over_an_index_built_from_text_loads_its_model_and_names_documents() {
    let Some(model) = crate::embed::minilm() else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    std::fs::write(
        d.join("c.jsonl"),
        "{\"_id\": \"cat\", \"title\": \"\", \"text\": \"The cat sat on the mat.\"}\n\
         {\"_id\": \"stocks\", \"text\": \"Stock markets fell sharply on Monday.\"}\n\
         {\"_id\": \"vaccine\", \"text\": \"A new vaccine reduces infection rates in older adults.\"}\n",
    )
    .unwrap();
    let m = model.display().to_string();
    ok(
        &format!("build --text c.jsonl --model {m} --pipeline exact:3 --out idx"),
        d,
    );
    // no --model: the recorded one is loaded
    let s = Server::start(d, &[], &[]);
    let (st, v) = s.post(
        "/search",
        &j!({"texts": ["immunisation of elderly people", "a kitten on a rug"], "k": 2}),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["results"][0][0]["doc_id"], "vaccine", "{v}");
    assert_eq!(v["results"][1][0]["doc_id"], "cat", "{v}");
    assert_eq!(v["results"][1][0]["id"], 0, "{v}");
    // bare vectors cannot be added to an index whose rows are named
    let (st, v) = s.post("/add", &j!({"vectors": [vec![0.1f32; 384]]}));
    assert_eq!(st, 400, "{v}");
    assert!(error_of(&v).contains("corpus ids"), "{v}");
    drop(s);
    // a model with other weights refuses to start
    let other = d.join("other");
    crate::embed::model_with_other_weights(&model, &other);
    let out = Command::new(env!("CARGO_BIN_EXE_rewa"))
        .args([
            "serve",
            "--index",
            "idx",
            "--addr",
            "127.0.0.1:0",
            "--model",
        ])
        .arg(&other)
        .current_dir(d)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not the one the index was built with"),
        "{err}"
    );
}

/// The tiny BERT fixture model of rewa-embed (16 dimensions, seeded random weights).
fn tiny_model() -> std::path::PathBuf {
    std::fs::canonicalize(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../rewa-embed/tests/fixtures/tiny-bert"),
    )
    .unwrap()
}

#[test]
fn serve_adds_and_deletes_texts_by_corpus_id_over_an_index_built_from_text() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    std::fs::write(
        d.join("c.jsonl"),
        "{\"_id\": \"cat\", \"text\": \"the cat sat on the mat\"}\n\
         {\"_id\": \"dog\", \"text\": \"a big red dog\"}\n",
    )
    .unwrap();
    let m = tiny_model().display().to_string();
    ok(
        &format!("build --text c.jsonl --model {m} --pipeline exact:4 --out idx"),
        d,
    );
    let s = Server::start(d, &[], &[]);
    let (st, v) = s.post(
        "/add",
        &j!({"texts": ["the red mat", "dogs sat"], "ids": ["mat", "dogs"]}),
    );
    assert_eq!((st, v), (200, j!({"count": 4, "first_id": 2})));
    // each added text is found by itself, named by its corpus id
    let (st, v) = s.post(
        "/search",
        &j!({"texts": ["the red mat", "dogs sat"], "k": 1}),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["results"][0][0]["doc_id"], "mat", "{v}");
    assert_eq!(v["results"][0][0]["id"], 2, "{v}");
    assert_eq!(v["results"][1][0]["doc_id"], "dogs", "{v}");
    for (body, words) in [
        (j!({"texts": ["x"], "ids": ["cat"]}), "cat"),
        (
            j!({"texts": ["x", "y"], "ids": ["z", "a\nb"]}),
            "holds a line break",
        ),
        (
            j!({"texts": ["x", "y"], "ids": ["z", "z"]}),
            "\"z\" names two rows",
        ),
        (j!({"texts": ["x"]}), "send \"ids\" with the texts"),
        (j!({"texts": ["x", "y"], "ids": ["z"]}), "1 ids for 2 texts"),
        (
            j!({"texts": ["x"], "ids": ["z"], "vectors": [[1.0]]}),
            "exactly one of",
        ),
        (j!({"vectors": [vec![0.1f32; 16]]}), "corpus ids"),
    ] {
        let (st, v) = s.post("/add", &body);
        assert_eq!(st, 400, "{body}: {v}");
        assert!(error_of(&v).contains(words), "{body}: {v}");
    }
    // delete by corpus id
    let (st, v) = s.post("/delete", &j!({"doc_ids": ["mat"]}));
    assert_eq!((st, v), (200, j!({"deleted": 1, "count": 3})));
    let (_, v) = s.post("/search", &j!({"texts": ["the red mat"], "k": 4}));
    let names: Vec<&str> = v["results"][0]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["doc_id"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 3, "{v}");
    assert!(!names.contains(&"mat"), "{v}");
    let (st, v) = s.post("/delete", &j!({"doc_ids": ["mat"]}));
    assert_eq!(st, 400, "{v}");
    assert!(error_of(&v).contains("no row has corpus id \"mat\""), "{v}");
    let (st, v) = s.post("/delete", &j!({"doc_ids": ["dog"], "ids": [0]}));
    assert_eq!(st, 400, "{v}");
    assert!(error_of(&v).contains("exactly one of"), "{v}");
    // the CLI reads what the server wrote
    assert_eq!(json("info --index idx", d)["count"], 3);
    let tsv = ok("search --index idx --text dogs --k 1", d);
    assert!(tsv.lines().nth(1).unwrap().contains("dogs"), "{tsv}");
}

/// Documents over HTTP: `"filter"`, `"fields"` and `"mode"` on /search, `"fields"` on /add,
/// /delete removing documents, bad filters a 400 naming the problem.
#[test]
fn serve_filters_shows_fields_and_searches_bm25() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    ok(
        "synth --classes 10 --per-class 50 --dim 32 --new-classes 0 --seed 1 --out a",
        d,
    );
    let recs: String = (0..500)
        .map(|i| {
            format!(
                "{{\"n\": {i}, \"k\": \"{}\", \"text\": \"row {i} word{}\"}}\n",
                ["a", "b"][i % 2],
                i % 10
            )
        })
        .collect();
    std::fs::write(d.join("f.jsonl"), recs).unwrap();
    ok(
        "build --base a/base.npy --fields f.jsonl --pipeline hadamard64+sign:100,exact:10 --out idx",
        d,
    );
    let s = Server::start(d, &[], &[]);
    let q = queries(d, 3);
    let filter =
        j!({"must": [{"key": "k", "match": {"value": "b"}}, {"key": "n", "range": {"lt": 300}}]});
    let (code, v) = s.post(
        "/search",
        &j!({"vectors": q, "k": 5, "filter": filter, "fields": ["n", "k"]}),
    );
    assert_eq!(code, 200, "{v}");
    for r in v["results"].as_array().unwrap() {
        assert_eq!(r.as_array().unwrap().len(), 5);
        for h in r.as_array().unwrap() {
            assert_eq!(h["fields"]["n"], h["id"], "{h}");
            assert_eq!(h["fields"]["k"], "b");
            assert!(h["id"].as_u64().unwrap() < 300 && h["id"].as_u64().unwrap() % 2 == 1);
            assert!(h["fields"].get("text").is_none());
        }
    }
    // the same as the CLI's filtered search
    let cli = ok_args(
        &[
            "search",
            "--index",
            "idx",
            "--queries",
            "a/queries_same.npy",
            "--k",
            "5",
            "--filter",
            &filter.to_string(),
        ],
        d,
    );
    assert_eq!(hits(&v), cli_hits(&cli, 3));
    // BM25 needs no model
    let (code, v) = s.post(
        "/search",
        &j!({"texts": ["row 42 word2"], "mode": "bm25", "k": 3, "fields": ["*"]}),
    );
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["results"][0][0]["id"], 42, "{v}");
    assert_eq!(v["results"][0][0]["fields"]["text"], "row 42 word2");
    // bad requests: 400 naming the problem
    for (body, needle) in [
        (
            j!({"vectors": q, "filter": {"must": [{"key": "colour", "match": {"value": 1}}]}}),
            "unknown field \"colour\"",
        ),
        (
            j!({"vectors": q, "filter": {"must": [{"key": "n", "match": {"value": "x"}}]}}),
            "field \"n\" holds numbers",
        ),
        (
            j!({"vectors": q, "filter": {"should": 3}}),
            "list of conditions",
        ),
        (
            j!({"vectors": q, "mode": "fuzzy"}),
            "unknown mode \"fuzzy\"",
        ),
        (j!({"texts": ["x"], "mode": "hybrid"}), "--model"),
    ] {
        let (code, v) = s.post("/search", &body);
        assert_eq!(code, 400, "{body}: {v}");
        assert!(error_of(&v).contains(needle), "{body}: {v}");
    }
    // add with fields, then delete: the documents follow
    let newv: Vec<Vec<f32>> = q.clone();
    let (code, v) = s.post(
        "/add",
        &j!({"vectors": newv, "fields": [{"n": 500, "k": "c"}, {"n": 501, "k": "c"}, {"n": 502, "k": "c"}]}),
    );
    assert_eq!(code, 200, "{v}");
    let (code, v) = s.post("/add", &j!({"vectors": [q[0].clone()], "fields": [{}, {}]}));
    assert_eq!(code, 400, "{v}");
    assert!(
        error_of(&v).contains("2 \"fields\" objects for 1 rows"),
        "{v}"
    );
    let c = j!({"must": [{"key": "k", "match": {"value": "c"}}]});
    let (_, v) = s.post(
        "/search",
        &j!({"vectors": q, "k": 10, "filter": c, "fields": ["n"]}),
    );
    let got: Vec<u64> = v["results"][0]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["id"].as_u64().unwrap())
        .collect();
    assert_eq!(got.len(), 3, "{v}");
    let (code, v) = s.post("/delete", &j!({"ids": [501]}));
    assert_eq!(code, 200, "{v}");
    let (_, v) = s.post("/search", &j!({"vectors": q, "k": 10, "filter": c}));
    let mut got: Vec<u64> = v["results"][1]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["id"].as_u64().unwrap())
        .collect();
    got.sort_unstable();
    assert_eq!(got, [500, 502], "{v}");
}

/// An index built in int8 is served in int8: its text queries score as the int8 vectors
/// `rewa embed --precision int8` writes (and not as f32 ones).
#[test]
fn serve_embeds_texts_in_the_precision_the_index_records() {
    let Some(model) = crate::embed::minilm() else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let queries = four_docs_two_queries(d);
    let m = model.display().to_string();
    ok(
        &format!("build --text docs.txt --model {m} --precision int8 --pipeline exact:4 --out idx"),
        d,
    );
    ok(
        &format!("embed --model {m} --input q.txt --out q8.npy --precision int8"),
        d,
    );
    ok(&format!("embed --model {m} --input q.txt --out q.npy"), d);
    let s = Server::start(d, &[], &[]);
    let (st, by_text) = s.post("/search", &j!({"texts": queries, "k": 4}));
    assert_eq!(st, 200, "{by_text}");
    assert_eq!(
        hits(&by_text),
        by_vectors(&s, d, "q8.npy"),
        "texts embedded in int8"
    );
    assert_ne!(hits(&by_text), by_vectors(&s, d, "q.npy"), "not in f32");
    drop(s);
    // another precision than the recorded one refuses to start
    let out = Command::new(env!("CARGO_BIN_EXE_rewa"))
        .args(["serve", "--index", "idx", "--addr", "127.0.0.1:0"])
        .args(["--precision", "f32"])
        .current_dir(d)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("embedded in int8"), "{err}");
    // an index of vectors served with --model and --precision int8 embeds texts in int8
    let t2 = tempfile::tempdir().unwrap();
    let d2 = t2.path();
    let docs_txt = d.join("docs.txt");
    ok(
        &format!(
            "embed --model {m} --input {} --out docs.npy",
            docs_txt.display()
        ),
        d2,
    );
    ok("build --base docs.npy --pipeline exact:4 --out idx", d2);
    let s = Server::start(d2, &["--model", &m, "--precision", "int8"], &[]);
    let (st, v) = s.post("/search", &j!({"texts": queries, "k": 4}));
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        hits(&v),
        by_vectors(&s, d, "q8.npy"),
        "texts embedded in int8"
    );
}

/// Four short documents in `docs.txt` and two queries in `q.txt` (the first about the
/// first document, the second about the third); returns the queries.
fn four_docs_two_queries(d: &std::path::Path) -> [&'static str; 2] {
    let docs = [
        "The cat sat on the mat.",
        "Stock markets fell sharply on Monday.",
        "A new vaccine reduces infection rates in older adults.",
        "The recipe needs two eggs and a cup of flour.",
    ];
    std::fs::write(d.join("docs.txt"), docs.join("\n") + "\n").unwrap();
    let queries = [
        "a kitten resting on a rug",
        "immunisation of elderly people",
    ];
    std::fs::write(d.join("q.txt"), queries.join("\n") + "\n").unwrap();
    queries
}

/// `/search` with the vectors of a `.npy` file: each query's (id, score) hits.
fn by_vectors(s: &Server, d: &std::path::Path, file: &str) -> Vec<Vec<(u64, f32)>> {
    let q = rewa::io::read_vectors(&d.join(file)).unwrap();
    let rows: Vec<Vec<f32>> = (0..q.len()).map(|i| q.row(i).to_vec()).collect();
    let (st, v) = s.post("/search", &j!({"vectors": rows, "k": 4}));
    assert_eq!(st, 200, "{v}");
    hits(&v)
}
