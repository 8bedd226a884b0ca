//! Parity with sentence-transformers: the SciFact vectors in the shared data
//! (`scifact/emb_<model>/docs.npy` and `queries.npy`, made by sentence-transformers 6.2 in
//! fp32; row i = line i of `corpus.jsonl` / `queries.jsonl`), recomputed here from the text:
//! documents in the BEIR layout `(title + " " + text).strip()`, queries as their `text`. Every row's cosine to its reference must be >= 0.9999,
//! documents cut at max_seq_length included.
//!
//! The models are not in the repository. `REWA_MODELS` names the directory that holds
//! `all-MiniLM-L6-v2/` and `all-mpnet-base-v2/` as `scripts/fetch-models.sh DIR` lays them out
//! (default: `models/` beside the repository); `REWA_DATA` the directory holding `scifact/`
//! (default: `shared/data/` beside the repository). A missing model or data set skips the test
//! with a notice, unless `REWA_REQUIRE_MODELS=1`, which makes it fail.
//! `REWA_PARITY_DOCS` overrides the number of texts checked (from the first line on).
//!
//! int8 (`Precision::Int8`) is held to its own floors, set below what the full SciFact runs
//! measured (`scripts/int8_quality.py`; README): every row's cosine and the mean.

use rewa_embed::{Embedder, Precision};
use std::path::{Path, PathBuf};

fn beside_repo(var: &str, default: &str) -> PathBuf {
    match std::env::var_os(var) {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../..")
            .join(default),
    }
}

/// The model directory and the reference folder, or None (after a notice) when either is
/// missing and models are not required.
pub(crate) fn inputs(model: &str, set: Set) -> Option<(PathBuf, PathBuf)> {
    let (jsonl, npy, _) = set.files();
    let model_dir = beside_repo("REWA_MODELS", "models").join(model);
    let data = beside_repo("REWA_DATA", "shared/data").join("scifact");
    let required = std::env::var("REWA_REQUIRE_MODELS").is_ok_and(|v| v == "1");
    for (what, p) in [
        ("model", model_dir.join("model.safetensors")),
        ("reference vectors", data.join(format!("emb_{model}/{npy}"))),
        ("texts", data.join(jsonl)),
    ] {
        if !p.is_file() {
            let msg = format!(
                "{what} not found at {} (run scripts/fetch-models.sh DIR and set REWA_MODELS=DIR; REWA_DATA names the folder holding scifact/)",
                p.display()
            );
            if required {
                panic!("REWA_REQUIRE_MODELS=1 but the {msg}");
            }
            eprintln!("skipped: {msg}");
            return None;
        }
    }
    Some((model_dir, data))
}

/// The first `n` records of a BEIR `.jsonl` file with their ids: documents in the BEIR layout
/// `(title + " " + text).strip()`, queries as their `text`.
pub(crate) fn records(path: &Path, n: usize, what: Set) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .take(n)
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let field = |k: &str| v[k].as_str().unwrap_or("").to_string();
            let text = match what {
                Set::Docs => format!("{} {}", field("title"), field("text"))
                    .trim()
                    .to_string(),
                Set::Queries => field("text"),
            };
            (field("_id"), text)
        })
        .collect()
}

/// Which SciFact texts: `corpus.jsonl` against `docs.npy`, or `queries.jsonl` against
/// `queries.npy`.
#[derive(Clone, Copy)]
pub(crate) enum Set {
    Docs,
    Queries,
}

impl Set {
    fn files(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Set::Docs => ("corpus.jsonl", "docs.npy", "doc_ids.txt"),
            Set::Queries => ("queries.jsonl", "queries.npy", "query_ids.txt"),
        }
    }
}

/// What a run must reach: every row's cosine to sentence-transformers' at least `min`, and
/// their mean at least `mean`.
struct Floor {
    precision: Precision,
    min: f64,
    mean: f64,
}

const F32: Floor = Floor {
    precision: Precision::F32,
    min: 0.9999,
    mean: 0.9999,
};

fn check(model: &str, set: Set, default_docs: usize) {
    check_at(model, set, default_docs, F32)
}

fn check_at(model: &str, set: Set, default_docs: usize, floor: Floor) {
    let Some((model_dir, data)) = inputs(model, set) else {
        return;
    };
    let (jsonl, npy, id_file) = set.files();
    let n: usize = std::env::var("REWA_PARITY_DOCS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default_docs);
    let docs = records(&data.join(jsonl), n, set);
    let ref_dir = data.join(format!("emb_{model}"));
    let ids = std::fs::read_to_string(ref_dir.join(id_file)).unwrap();
    for ((id, _), want) in docs.iter().zip(ids.lines()) {
        assert_eq!(id, want, "{jsonl} and {id_file} disagree on the row order");
    }
    let path = ref_dir.join(npy);
    let reference = rewa::io::read_npy(&path)
        .unwrap()
        .into_vectors(&path)
        .unwrap();

    let t = std::time::Instant::now();
    let embedder = Embedder::load_precision(&model_dir, floor.precision).unwrap();
    assert_eq!(embedder.dim(), reference.dim());
    let texts: Vec<&str> = docs.iter().map(|d| d.1.as_str()).collect();
    let lens: Vec<usize> = embedder
        .tokenize(&texts)
        .unwrap()
        .iter()
        .map(Vec::len)
        .collect();
    let got = embedder.embed(&texts).unwrap();
    eprintln!(
        "{model}: loaded and embedded in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    let mut cos = Vec::with_capacity(texts.len());
    for i in 0..texts.len() {
        let (a, b) = (got.row(i), reference.row(i));
        let dot: f64 = a
            .iter()
            .zip(b)
            .map(|(x, y)| f64::from(*x) * f64::from(*y))
            .sum();
        let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
        let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
        cos.push(dot / (na * nb));
    }
    let truncated = lens
        .iter()
        .filter(|&&l| l == embedder.max_seq_len())
        .count();
    let min = cos.iter().cloned().fold(f64::INFINITY, f64::min);
    let mean = cos.iter().sum::<f64>() / cos.len() as f64;
    eprintln!(
        "{model} {npy} {}: {} texts ({truncated} cut at max_seq_len {}): cosine min {min:.9} (1 - min = {:.1e}) mean {mean:.9}",
        floor.precision,
        cos.len(),
        embedder.max_seq_len(),
        1.0 - min
    );
    let bad: Vec<String> = cos
        .iter()
        .enumerate()
        .filter(|(_, &c)| c < floor.min)
        .map(|(i, c)| {
            format!(
                "row {i} (id {}, {} word pieces): {c:.6}",
                docs[i].0, lens[i]
            )
        })
        .collect();
    assert!(
        bad.is_empty(),
        "{} rows below {}:\n{}",
        floor.precision,
        floor.min,
        bad.join("\n")
    );
    assert!(
        mean >= floor.mean,
        "{}: mean cosine {mean} below {}",
        floor.precision,
        floor.mean
    );
}

#[test]
fn minilm_matches_sentence_transformers_on_scifact() {
    check("all-MiniLM-L6-v2", Set::Docs, 120);
}

#[test]
fn minilm_queries_match_sentence_transformers_on_scifact() {
    check("all-MiniLM-L6-v2", Set::Queries, 150);
}

#[test]
fn mpnet_matches_sentence_transformers_on_scifact() {
    check("all-mpnet-base-v2", Set::Docs, 16);
}

#[test]
fn mpnet_queries_match_sentence_transformers_on_scifact() {
    check("all-mpnet-base-v2", Set::Queries, 50);
}

/// MiniLM in int8: SciFact's documents measured min 0.9981, mean 0.9989 over all 5,183.
const MINILM_INT8: Floor = Floor {
    precision: Precision::Int8,
    min: 0.997,
    mean: 0.998,
};

/// MPNet in int8 (all SciFact: see the README).
const MPNET_INT8: Floor = Floor {
    precision: Precision::Int8,
    min: 0.99,
    mean: 0.997,
};

#[test]
fn minilm_int8_stays_close_to_sentence_transformers() {
    check_at("all-MiniLM-L6-v2", Set::Docs, 120, MINILM_INT8);
    check_at("all-MiniLM-L6-v2", Set::Queries, 150, MINILM_INT8);
}

#[test]
fn mpnet_int8_stays_close_to_sentence_transformers() {
    check_at("all-mpnet-base-v2", Set::Docs, 16, MPNET_INT8);
    check_at("all-mpnet-base-v2", Set::Queries, 50, MPNET_INT8);
}
