// The committed index in `tests/data/v1` was written by format version 1. Every later build
// must open it and return the results stored beside it; a format change that breaks this
// needs a new version number and a reader for the old one.
//
// Regenerate (only when deliberately replacing the fixture):
// `cargo test -p rewa --test golden -- --ignored regenerate`

use rewa::{Index, IndexSpec, Metric, SearchParams};
use std::path::PathBuf;

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/v1")
}

/// `(query row, [(id, distance)])` for every query, as written at generation time.
type Expected = Vec<Vec<(u32, f32)>>;

fn search_all(index: &Index) -> Expected {
    let q = rewa::io::read_vectors(&fixture().join("queries.npy")).unwrap();
    let p = SearchParams {
        filter: None,
        k: 5,
        pipeline: None,
    };
    index
        .search_batch(q.view(), &p)
        .unwrap()
        .into_iter()
        .map(|h| h.into_iter().map(|h| (h.id, h.distance)).collect())
        .collect()
}

#[test]
fn golden_v1_index_opens_and_answers_as_recorded() {
    let dir = fixture().join("index");
    let index = Index::open(&dir).unwrap();
    assert_eq!(index.len(), 200);
    assert_eq!(index.dim(), 32);
    assert_eq!(index.metric(), Metric::Cosine);
    assert_eq!(
        index.pipeline().to_string(),
        "pca16+hadamard64+sign:60,hadamard32+int8:20,exact:5"
    );
    let info = rewa::index::format::info(&dir).unwrap();
    assert_eq!(info.format_version, 1);
    let want: Expected =
        serde_json::from_str(&std::fs::read_to_string(fixture().join("expected.json")).unwrap())
            .unwrap();
    let got = search_all(&index);
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        let ids = |v: &Vec<(u32, f32)>| v.iter().map(|h| h.0).collect::<Vec<_>>();
        assert_eq!(ids(g), ids(w));
        for (a, b) in g.iter().zip(w) {
            assert!((a.1 - b.1).abs() < 1e-5, "{a:?} vs {b:?}");
        }
    }
}

#[test]
#[ignore = "rewrites the committed fixture"]
fn regenerate() {
    let (base, _, queries, _) = rewa::testutil::clusters(10, 20, 32, 0.3, 11);
    let spec = IndexSpec {
        metric: Metric::Cosine,
        pipeline: "pca16+hadamard64+sign:60,hadamard32+int8:20,exact:5"
            .parse()
            .unwrap(),
        seed: 3,
    };
    let index = Index::build(&spec, base.view()).unwrap();
    let dir = fixture();
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    index.save(&dir.join("index")).unwrap();
    rewa::io::write_npy_f32(&dir.join("queries.npy"), &queries).unwrap();
    let got = search_all(&index);
    std::fs::write(
        dir.join("expected.json"),
        serde_json::to_string(&got).unwrap(),
    )
    .unwrap();
}
