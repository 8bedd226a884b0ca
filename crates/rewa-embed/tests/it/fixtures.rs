//! Reference outputs: tiny random BERT and MPNet models built and run by the Python reference
//! implementation (transformers' `BertModel` / `MPNetModel` inside sentence-transformers), saved
//! as sentence-transformers directories with the vectors they gave, in `tests/fixtures/`
//! (`tests/fixtures/README.md` says how they were made). Every run checks the whole pipeline
//! against them, with no download and no Python: the word pieces of each text, and each vector
//! component within 1e-5, batched as the reference did and one text at a time.

use rewa_embed::{Backend, Embedder};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// Largest difference allowed in any vector component.
const TOL: f32 = 1e-5;

#[derive(Deserialize)]
struct Expected {
    pooling: String,
    normalize: bool,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    max_seq_length: usize,
    batch_size: usize,
    texts: Vec<String>,
    token_ids: Vec<Vec<u32>>,
    vectors: Vec<Vec<f32>>,
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn expected(dir: &Path) -> Expected {
    let text = std::fs::read_to_string(dir.join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The largest component difference between `got` and `want`, after checking the cosine.
fn compare(got: &[f32], want: &[f32], what: &str) -> f32 {
    assert_eq!(got.len(), want.len(), "{what}: dimension");
    let err = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(
        err <= TOL,
        "{what}: max difference {err}\n got  {got:?}\n want {want:?}"
    );
    let dot: f64 = got.iter().zip(want).map(|(a, b)| f64::from(a * b)).sum();
    let norm = |v: &[f32]| v.iter().map(|a| f64::from(a * a)).sum::<f64>().sqrt();
    let cos = dot / (norm(got) * norm(want));
    assert!(cos >= 1.0 - 1e-6, "{what}: cosine {cos}");
    err
}

/// Both backends (the native forward and the candle reference) against the reference.
fn check(name: &str, pooling: &str, normalize: bool) {
    for backend in [Backend::Native, Backend::Candle] {
        check_with(name, pooling, normalize, backend);
    }
}

fn check_with(name: &str, pooling: &str, normalize: bool, backend: Backend) {
    let dir = fixture(name);
    let exp = expected(&dir);
    assert_eq!((exp.pooling.as_str(), exp.normalize), (pooling, normalize));
    let mut e = Embedder::load_with(&dir, backend).unwrap();
    assert_eq!(e.backend(), backend, "{name}");
    assert_eq!(e.dim(), 16, "{name}");
    assert_eq!(
        e.max_seq_len(),
        exp.cases[0].max_seq_length,
        "{name}: max_seq_length as the reference loads it"
    );
    let mut worst = 0f32;
    for case in &exp.cases {
        e.set_max_seq_len(case.max_seq_length).unwrap();
        let texts: Vec<&str> = case.texts.iter().map(String::as_str).collect();
        let what = |i: usize| {
            format!(
                "{name} (max_seq_len {}) {:?}",
                case.max_seq_length, texts[i]
            )
        };

        let ids = e.tokenize(&texts).unwrap();
        for (i, (got, want)) in ids.iter().zip(&case.token_ids).enumerate() {
            assert_eq!(got, want, "{}: word pieces", what(i));
        }

        e.set_batch_size(case.batch_size).unwrap();
        let together = e.embed_counted(&texts).unwrap();
        assert_eq!(
            together.tokens,
            case.token_ids.iter().map(Vec::len).sum::<usize>(),
            "{name}: token count"
        );
        for (i, want) in case.vectors.iter().enumerate() {
            worst = worst.max(compare(together.vectors.row(i), want, &what(i)));
            let alone = e.embed(&[texts[i]]).unwrap();
            worst = worst.max(compare(alone.row(0), want, &format!("{} alone", what(i))));
        }
        // All texts in one batch, padded to the longest.
        e.set_batch_size(texts.len()).unwrap();
        let one_batch = e.embed(&texts).unwrap();
        for (i, want) in case.vectors.iter().enumerate() {
            let what = format!("{} in one batch", what(i));
            worst = worst.max(compare(one_batch.row(i), want, &what));
        }
    }
    eprintln!("{name} ({backend:?}): max abs difference to the reference {worst:e}");
}

#[test]
fn fixtures_tiny_bert_mean_matches_the_reference() {
    check("tiny-bert", "mean", true);
}

#[test]
fn fixtures_tiny_bert_cls_unnormalised_matches_the_reference() {
    check("tiny-bert-cls", "cls", false);
}

#[test]
fn fixtures_tiny_mpnet_mean_matches_the_reference() {
    check("tiny-mpnet", "mean", true);
}

#[test]
fn fixtures_tiny_mpnet_cls_matches_the_reference() {
    check("tiny-mpnet-cls", "cls", true);
}

/// int8 on the four tiny models: every vector near the reference's, a text's vector the same
/// to the bit alone, in its batch and in one batch (scales are per token, sums exact), the
/// precision reported, and int8 refused where it cannot run (the candle backend).
#[test]
fn fixtures_int8_stays_near_the_reference_and_is_batch_independent() {
    use rewa_embed::Precision;
    for name in ["tiny-bert", "tiny-bert-cls", "tiny-mpnet", "tiny-mpnet-cls"] {
        let dir = fixture(name);
        let exp = expected(&dir);
        let mut e = Embedder::load_precision(&dir, Precision::Int8).unwrap();
        assert_eq!(e.precision(), Precision::Int8);
        let mut worst = 1f64;
        for case in &exp.cases {
            e.set_max_seq_len(case.max_seq_length).unwrap();
            let texts: Vec<&str> = case.texts.iter().map(String::as_str).collect();
            e.set_batch_size(case.batch_size).unwrap();
            let together = e.embed(&texts).unwrap();
            e.set_batch_size(texts.len()).unwrap();
            let one_batch = e.embed(&texts).unwrap();
            for (i, want) in case.vectors.iter().enumerate() {
                let got = together.row(i);
                let alone = e.embed(&[texts[i]]).unwrap();
                assert_eq!(got, alone.row(0), "{name}: text {i} alone");
                assert_eq!(got, one_batch.row(i), "{name}: text {i} in one batch");
                let dot: f64 = got.iter().zip(want).map(|(a, b)| f64::from(a * b)).sum();
                let norm = |v: &[f32]| v.iter().map(|a| f64::from(a * a)).sum::<f64>().sqrt();
                let cos = dot / (norm(got) * norm(want));
                worst = worst.min(cos);
                assert!(got != want.as_slice(), "{name}: int8 cannot be exact");
            }
        }
        eprintln!("{name} int8: min cosine to the reference {worst:.6}");
        assert!(worst >= 0.99, "{name}: int8 min cosine {worst}");
    }
    let err = Embedder::load_opts(fixture("tiny-bert"), Backend::Candle, Precision::Int8)
        .err()
        .expect("int8 on candle is refused");
    assert!(err.to_string().contains("native"), "{err}");
    let err = "int4".parse::<Precision>().unwrap_err();
    assert!(err.to_string().contains("f32 or int8"), "{err}");
    assert_eq!("int8".parse::<Precision>().unwrap(), Precision::Int8);
}
