//! Inputs at the edges, on the tiny fixture models: a `config.json` with sizes no model can
//! have is refused by name before anything is built (candle panicked on `num_attention_heads:
//! 0`), and a text of megabytes is tokenized only as far as truncation reaches, with the same
//! word pieces and vector as its beginning.

use rewa_embed::{Backend, Embedder, Error};
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A copy of the fixture `name` in `dst` whose `config.json` has `field` set to `value`.
fn with_config(name: &str, dst: &Path, field: &str, value: serde_json::Value) {
    std::fs::create_dir_all(dst).unwrap();
    for e in walk(&fixture(name)) {
        let rel = e.strip_prefix(fixture(name)).unwrap();
        std::fs::create_dir_all(dst.join(rel).parent().unwrap()).unwrap();
        std::fs::copy(&e, dst.join(rel)).unwrap();
    }
    let path = dst.join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    cfg[field] = value;
    std::fs::write(&path, cfg.to_string()).unwrap();
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn impossible_config_sizes_are_refused_by_name() {
    let t = tempfile::tempdir().unwrap();
    let cases: &[(&str, &str, serde_json::Value, &str)] = &[
        (
            "tiny-bert",
            "num_attention_heads",
            0.into(),
            "num_attention_heads 0 is outside",
        ),
        (
            "tiny-bert",
            "num_attention_heads",
            3.into(),
            "hidden_size 16 is not a multiple of num_attention_heads 3",
        ),
        (
            "tiny-bert",
            "num_hidden_layers",
            0.into(),
            "num_hidden_layers 0",
        ),
        (
            "tiny-bert",
            "intermediate_size",
            0.into(),
            "intermediate_size 0",
        ),
        ("tiny-bert", "vocab_size", 0.into(), "vocab_size 0"),
        (
            "tiny-bert",
            "max_position_embeddings",
            0.into(),
            "max_position_embeddings 0",
        ),
        (
            "tiny-bert",
            "type_vocab_size",
            0.into(),
            "type_vocab_size 0",
        ),
        (
            "tiny-bert",
            "hidden_size",
            (1u64 << 40).into(),
            "hidden_size 1099511627776 is outside",
        ),
        (
            "tiny-bert",
            "pad_token_id",
            98.into(),
            "pad_token_id 98 is not below vocab_size 98",
        ),
        (
            "tiny-mpnet",
            "num_attention_heads",
            0.into(),
            "num_attention_heads 0",
        ),
        (
            "tiny-mpnet",
            "relative_attention_num_buckets",
            2.into(),
            "relative_attention_num_buckets 2 (MPNet needs at least 4)",
        ),
    ];
    for (i, (name, field, value, want)) in cases.iter().enumerate() {
        let dir = t.path().join(i.to_string());
        with_config(name, &dir, field, value.clone());
        for backend in [Backend::Native, Backend::Candle] {
            match Embedder::load_with(&dir, backend) {
                Err(Error::Model { path, reason }) => {
                    assert_eq!(path, dir.join("config.json"));
                    assert!(reason.contains(want), "{name} {field}={value}: {reason}");
                }
                Err(e) => panic!("{name} {field}={value}: expected Error::Model, got {e}"),
                Ok(_) => panic!("{name} {field}={value}: loaded"),
            }
        }
    }
    // the copies themselves load (the edits are what is refused)
    with_config(
        "tiny-mpnet",
        &t.path().join("ok"),
        "num_attention_heads",
        4.into(),
    );
    Embedder::load(t.path().join("ok")).unwrap();
}

/// A 5 MB single line gives the word pieces and the vector of its first sentences; so does a
/// text whose words start after 100 KB of spaces (the tokenized part grows until it reaches
/// them).
#[test]
fn a_huge_text_is_embedded_as_its_beginning() {
    for name in ["tiny-bert", "tiny-mpnet"] {
        let e = Embedder::load(fixture(name)).unwrap();
        let sentence = "the quick brown fox jumped over the lazy dog, and the cat sat. ";
        let huge = sentence.repeat(5_000_000 / sentence.len());
        let start = sentence.repeat(3);
        assert!(huge.len() > 300 * e.tokenized_bytes());
        let ids = e.tokenize(&[&huge, &start]).unwrap();
        assert_eq!(ids[0].len(), e.max_seq_len(), "{name}");
        assert_eq!(ids[0], ids[1], "{name}");
        let v = e.embed(&[&huge, &start]).unwrap();
        assert_eq!(v.row(0), v.row(1), "{name}");

        let spaced = format!("hello{}{start}", " ".repeat(100_000));
        let plain = format!("hello {start}");
        let ids = e.tokenize(&[&spaced, &plain]).unwrap();
        assert_eq!(ids[0].len(), e.max_seq_len(), "{name}");
        assert_eq!(ids[0], ids[1], "{name}");
        // a short text is not cut
        let ids = e.tokenize(&["the cat", "the cat sat"]).unwrap();
        assert_eq!(ids[1].len(), ids[0].len() + 1, "{name}");
    }
}
