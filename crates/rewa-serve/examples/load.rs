//! Load generator for `rewa serve`: N closed-loop clients on keep-alive connections, a mix of
//! searches (one query) and adds, for a fixed time; prints one JSON report.
//!
//! ```text
//! cargo run --release -p rewa-serve --example load -- --addr 127.0.0.1:7878 \
//!     --queries queries.npy --clients 8 --seconds 20 [--add-percent 5] [--add-rows 10] [--k 10]
//! ```
//!
//! Request bodies are serialised before the clock starts, so the generator spends its time
//! on sockets. Latency is from writing a request to reading its whole answer.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

struct Opts {
    addr: String,
    queries: String,
    clients: usize,
    seconds: f64,
    add_percent: f64,
    add_rows: usize,
    k: usize,
}

fn opts() -> Opts {
    let mut o = Opts {
        addr: "127.0.0.1:7878".into(),
        queries: String::new(),
        clients: 1,
        seconds: 20.0,
        add_percent: 5.0,
        add_rows: 10,
        k: 10,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let v = pair.get(1).cloned().unwrap_or_default();
        let num = |v: &str| -> f64 {
            v.parse()
                .unwrap_or_else(|_| panic!("{}: not a number: {v:?}", pair[0]))
        };
        match pair[0].as_str() {
            "--addr" => o.addr = v,
            "--queries" => o.queries = v,
            "--clients" => o.clients = num(&v) as usize,
            "--seconds" => o.seconds = num(&v),
            "--add-percent" => o.add_percent = num(&v),
            "--add-rows" => o.add_rows = num(&v) as usize,
            "--k" => o.k = num(&v) as usize,
            other => panic!("unknown flag {other}"),
        }
    }
    assert!(!o.queries.is_empty(), "--queries FILE is required");
    o
}

/// xorshift64*: a seeded stream per client, no dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[derive(Default)]
struct Tally {
    search_us: Vec<u64>,
    add_us: Vec<u64>,
    status: BTreeMap<u16, u64>,
    io_errors: u64,
}

/// One keep-alive connection.
struct Conn {
    addr: String,
    stream: Option<BufReader<TcpStream>>,
}

impl Conn {
    /// Sends a request and reads its answer; the status, or an I/O error (the connection is
    /// then dropped and made again on the next call).
    fn post(&mut self, path: &str, body: &[u8]) -> std::io::Result<u16> {
        let r = self.try_post(path, body);
        if r.is_err() {
            self.stream = None;
        }
        r
    }
    fn try_post(&mut self, path: &str, body: &[u8]) -> std::io::Result<u16> {
        if self.stream.is_none() {
            let s = TcpStream::connect(&self.addr)?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(Duration::from_secs(300)))?;
            self.stream = Some(BufReader::new(s));
        }
        let r = self.stream.as_mut().expect("invariant: connected above");
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: load\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let w = r.get_mut();
        w.write_all(head.as_bytes())?;
        w.write_all(body)?;
        let mut line = String::new();
        r.read_line(&mut line)?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
        let (mut len, mut close) = (0usize, false);
        loop {
            line.clear();
            r.read_line(&mut line)?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let (name, value) = l.split_once(':').unwrap_or((l, ""));
            match name.to_ascii_lowercase().as_str() {
                "content-length" => len = value.trim().parse().unwrap_or(0),
                "connection" => close = value.trim().eq_ignore_ascii_case("close"),
                _ => {}
            }
        }
        let mut body = vec![0u8; len];
        r.read_exact(&mut body)?;
        if close {
            self.stream = None;
        }
        Ok(status)
    }
}

fn percentile(v: &mut [u64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_unstable();
    let i = ((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1;
    v[i] as f64 / 1e3
}

fn main() {
    let o = opts();
    let q = rewa::io::read_vectors(std::path::Path::new(&o.queries)).expect("reading --queries");
    let row = |i: usize| q.row(i % q.len()).to_vec();
    let searches: Vec<Vec<u8>> = (0..256)
        .map(|i| serde_json::to_vec(&serde_json::json!({"vectors": [row(i)], "k": o.k})).unwrap())
        .collect();
    let adds: Vec<Vec<u8>> = (0..64)
        .map(|i| {
            let rows: Vec<Vec<f32>> = (0..o.add_rows).map(|j| row(i * o.add_rows + j)).collect();
            serde_json::to_vec(&serde_json::json!({ "vectors": rows })).unwrap()
        })
        .collect();
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs_f64(o.seconds);
    let tallies: Vec<Tally> = std::thread::scope(|sc| {
        let handles: Vec<_> = (0..o.clients)
            .map(|c| {
                let (searches, adds, addr) = (&searches, &adds, o.addr.clone());
                let add_percent = o.add_percent;
                sc.spawn(move || {
                    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (c as u64 + 1));
                    let mut conn = Conn { addr, stream: None };
                    let mut t = Tally::default();
                    while Instant::now() < deadline {
                        let is_add = (rng.below(10_000) as f64) < add_percent * 100.0;
                        let (path, body) = if is_add {
                            ("/add", &adds[rng.below(adds.len())])
                        } else {
                            ("/search", &searches[rng.below(searches.len())])
                        };
                        let s = Instant::now();
                        match conn.post(path, body) {
                            Ok(status) => {
                                *t.status.entry(status).or_default() += 1;
                                let us = s.elapsed().as_micros() as u64;
                                if is_add {
                                    t.add_us.push(us);
                                } else {
                                    t.search_us.push(us);
                                }
                            }
                            Err(_) => t.io_errors += 1,
                        }
                    }
                    t
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let secs = t0.elapsed().as_secs_f64();
    let mut all = Tally::default();
    for t in tallies {
        all.search_us.extend(t.search_us);
        all.add_us.extend(t.add_us);
        for (s, n) in t.status {
            *all.status.entry(s).or_default() += n;
        }
        all.io_errors += t.io_errors;
    }
    let (ns, na) = (all.search_us.len(), all.add_us.len());
    let mut both: Vec<u64> = all.search_us.iter().chain(&all.add_us).copied().collect();
    let report = serde_json::json!({
        "clients": o.clients,
        "seconds": secs,
        "requests": ns + na,
        "qps": (ns + na) as f64 / secs,
        "p50_ms": percentile(&mut both, 0.50),
        "p99_ms": percentile(&mut both, 0.99),
        "search": {"n": ns, "qps": ns as f64 / secs,
                   "p50_ms": percentile(&mut all.search_us, 0.50),
                   "p99_ms": percentile(&mut all.search_us, 0.99)},
        "add": {"n": na, "qps": na as f64 / secs,
                "p50_ms": percentile(&mut all.add_us, 0.50),
                "p99_ms": percentile(&mut all.add_us, 0.99)},
        "status": all.status.iter().map(|(s, n)| (s.to_string(), *n)).collect::<BTreeMap<_, _>>(),
        "io_errors": all.io_errors,
    });
    println!("{report}");
}
