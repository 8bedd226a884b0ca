//! REWA attention through the whole model: on the tiny fixture models (always), and its
//! fidelity on the real MiniLM (when the models are present; `parity.rs` says how).

use rewa_embed::{Attention, Backend, Embedder, KeyProjections, RewaAttention};
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// The fixture's longest texts (they are cut at 130 word pieces).
fn long_texts(dir: &Path) -> Vec<String> {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    v["cases"][1]["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| f64::from(x * y)).sum();
    let n = |v: &[f32]| v.iter().map(|x| f64::from(x * x)).sum::<f64>().sqrt();
    dot / (n(a) * n(b))
}

/// Keeping every key through the sparse path (top = len - 1 besides the first token) gives
/// full attention's vector to 1e-5, for BERT and MPNet (whose relative-position bias the
/// sparse path adds per kept key); a small top changes it.
#[test]
fn keeping_every_key_equals_full_attention_in_both_models() {
    for name in ["tiny-bert", "tiny-mpnet"] {
        let dir = fixture(name);
        let mut e = Embedder::load(&dir).unwrap();
        e.set_max_seq_len(130).unwrap();
        let texts = long_texts(&dir);
        for t in texts.iter().take(2) {
            let len = e.tokenize(&[t]).unwrap()[0].len();
            assert!(len > 40, "{name}: a long text, got {len}");
            e.set_attention(Attention::Full).unwrap();
            let full = e.embed(&[t]).unwrap();
            for score in ["hamming", "asym", "exact"] {
                let all: Attention = format!("rewa:bits=16,top={},score={score}", len - 1)
                    .parse()
                    .unwrap();
                e.set_attention(all).unwrap();
                let got = e.embed(&[t]).unwrap();
                let d = max_diff(got.row(0), full.row(0));
                assert!(d < 1e-5, "{name} {score}: {d}");
            }
            e.set_attention("rewa:bits=16,top=4".parse().unwrap())
                .unwrap();
            let few = e.embed(&[t]).unwrap();
            assert!(
                max_diff(few.row(0), full.row(0)) > 1e-4,
                "{name}: top=4 of {len} keys left the vector unchanged"
            );
        }
    }
}

#[test]
fn the_candle_backend_refuses_rewa_attention() {
    let mut e = Embedder::load_with(fixture("tiny-bert"), Backend::Candle).unwrap();
    let err = e
        .set_attention(Attention::Rewa(RewaAttention::new(16, 4)))
        .unwrap_err()
        .to_string();
    assert!(err.contains("native forward pass"), "{err}");
    e.set_attention(Attention::Full).unwrap();
}

/// Fitted projections: saved and loaded exactly; used by keys=; refused for another model's
/// weights or shape, and when the file is not one.
#[test]
fn fitted_key_projections_round_trip_and_are_checked() {
    let t = tempfile::tempdir().unwrap();
    let dir = fixture("tiny-bert");
    let e = Embedder::load(&dir).unwrap();
    let texts = long_texts(&dir);
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let k = e.fit_key_projections(&refs, |_| {}).unwrap();
    let shape = e.attention_shape().unwrap();
    assert_eq!(k.shape, shape);
    assert_eq!(k.texts, texts.len());
    // each head's directions are orthonormal and sorted by variance
    let d = shape.head_dim;
    for (c, v) in k
        .components
        .chunks_exact(d * d)
        .zip(k.variances.chunks_exact(d))
    {
        for i in 0..d {
            for j in 0..d {
                let dot: f32 = (0..d).map(|t| c[i * d + t] * c[j * d + t]).sum();
                assert!((dot - (i == j) as u8 as f32).abs() < 1e-4, "{i} {j} {dot}");
            }
        }
        assert!(v.windows(2).all(|w| w[0] >= w[1]), "{v:?}");
    }
    let path = t.path().join("keys.safetensors");
    k.save(&path).unwrap();
    let back = KeyProjections::load(&path).unwrap();
    assert_eq!(back.components, k.components);
    assert_eq!(back.variances, k.variances);
    assert_eq!(
        (back.shape, back.keys, back.texts),
        (k.shape, k.keys, k.texts)
    );

    let mut e = Embedder::load(&dir).unwrap();
    let spec = format!("rewa:bits=8,top=4,rank=4,keys={}", path.display());
    e.set_attention(spec.parse().unwrap()).unwrap();
    assert_eq!(e.attention().to_string(), spec);
    let fitted = e.embed(&refs).unwrap();
    e.set_attention("rewa:bits=8,top=4".parse().unwrap())
        .unwrap();
    let random = e.embed(&refs).unwrap();
    assert!(
        max_diff(fitted.as_slice(), random.as_slice()) > 1e-6,
        "keys= changed nothing"
    );

    // another model's weights
    let mut other = Embedder::load(fixture("tiny-bert-cls")).unwrap();
    let err = other
        .set_attention(spec.parse().unwrap())
        .unwrap_err()
        .to_string();
    assert!(err.contains("other weights"), "{err}");
    // same weights' hash, other shape
    let mut wrong = back.clone();
    wrong.shape.heads = 1;
    wrong.components.truncate(shape.layers * d * d);
    wrong.variances.truncate(shape.layers * d);
    let p2 = t.path().join("wrong.safetensors");
    wrong.save(&p2).unwrap();
    let err = Embedder::load(&dir)
        .unwrap()
        .set_attention(
            format!("rewa:bits=8,top=4,keys={}", p2.display())
                .parse()
                .unwrap(),
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("this model has"), "{err}");
    // not a key file
    let p3 = t.path().join("junk.safetensors");
    std::fs::write(&p3, b"not a safetensors file").unwrap();
    let err = KeyProjections::load(&p3).unwrap_err().to_string();
    assert!(err.contains("not a safetensors file"), "{err}");
    let err = KeyProjections::load(&dir.join("model.safetensors"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a key-projection file"), "{err}");
}

/// MiniLM on the first 32 SciFact documents (cut at 256 word pieces), against its own full
/// attention: mean cosine above floors measured on these documents, rising with top, and the
/// code close to the exact top-k selection it stands in for.
#[test]
fn minilm_fidelity_on_scifact_documents() {
    use crate::parity::{inputs, records, Set};
    let Some((model_dir, data)) = inputs("all-MiniLM-L6-v2", Set::Docs) else {
        return;
    };
    let docs = records(&data.join("corpus.jsonl"), 32, Set::Docs);
    let texts: Vec<&str> = docs.iter().map(|d| d.1.as_str()).collect();
    let mut e = Embedder::load(&model_dir).unwrap();
    let full = e.embed(&texts).unwrap();
    let mut mean_cos = |spec: &str| -> f64 {
        e.set_attention(spec.parse().unwrap()).unwrap();
        let v = e.embed(&texts).unwrap();
        (0..texts.len())
            .map(|i| cosine(v.row(i), full.row(i)))
            .sum::<f64>()
            / texts.len() as f64
    };
    let h8 = mean_cos("rewa:bits=64,top=8");
    let h32 = mean_cos("rewa:bits=64,top=32");
    let x32 = mean_cos("rewa:bits=64,top=32,score=exact");
    let h128 = mean_cos("rewa:bits=64,top=128");
    eprintln!("MiniLM mean cosine to full attention: top 8 {h8:.4}, 32 {h32:.4} (exact selection {x32:.4}), 128 {h128:.4}");
    assert!(h8 > 0.80 && h32 > 0.90 && h128 > 0.985, "{h8} {h32} {h128}");
    assert!(h8 < h32 && h32 < h128);
    assert!(
        h32 > x32 - 0.02,
        "the code loses {:.4} to exact selection",
        x32 - h32
    );
}
