// build -> save -> open -> search equals the in-memory search; add equals building on the
// concatenation; every damaged file gets its own error.

use rewa::testutil::clusters;
use rewa::{Error, Index, IndexSpec, Metric, SearchParams, Vectors};
use std::path::Path;

fn spec(metric: Metric) -> IndexSpec {
    IndexSpec {
        metric,
        pipeline:
            "pca32+hadamard128+sign:200,hadamard128+asign:100,opq16+pq16:70,hadamard64+int8:50,exact:10"
                .parse()
                .unwrap(),
        seed: 5,
    }
}

fn data() -> (Vectors, Vectors) {
    let (base, _, queries, _) = clusters(20, 40, 48, 0.2, 9);
    (base, queries)
}

fn search(i: &Index, q: &Vectors) -> Vec<Vec<rewa::Hit>> {
    i.search_batch(
        q.view(),
        &SearchParams {
            filter: None,
            k: 10,
            pipeline: None,
        },
    )
    .unwrap()
}

#[test]
fn save_open_search_is_identical() {
    let (base, queries) = data();
    for metric in [Metric::Cosine, Metric::L2] {
        let t = tempfile::tempdir().unwrap();
        let index = Index::build(&spec(metric), base.view()).unwrap();
        index.save(t.path()).unwrap();
        let opened = Index::open(t.path()).unwrap();
        assert_eq!(opened.len(), index.len());
        assert_eq!(opened.pipeline(), index.pipeline());
        assert_eq!(
            search(&opened, &queries),
            search(&index, &queries),
            "{metric}"
        );
        // A reloaded encoder gives identical codes.
        for (i, (a, b)) in index.encoders().iter().zip(opened.encoders()).enumerate() {
            assert_eq!(index.segments()[0].codes(i), opened.segments()[0].codes(i));
            assert_eq!(
                a.encode_batch(queries.view()).unwrap(),
                b.encode_batch(queries.view()).unwrap()
            );
        }
    }
}

#[test]
fn add_equals_build_on_concatenation() {
    let (base, queries) = data();
    let (first, second) = (
        base.view().slice(0, 500),
        base.view().slice(500, base.len()),
    );
    let t = tempfile::tempdir().unwrap();
    let mut index = Index::fit(&spec(Metric::Cosine), base.view()).unwrap();
    index.add(first).unwrap();
    index.save(t.path()).unwrap();
    let mut reopened = Index::open(t.path()).unwrap();
    reopened.add(second).unwrap();
    reopened.save(t.path()).unwrap();
    let after = Index::open(t.path()).unwrap();
    let mut whole = Index::fit(&spec(Metric::Cosine), base.view()).unwrap();
    whole.add(base.view()).unwrap();
    assert_eq!(after.len(), base.len());
    assert_eq!(search(&after, &queries), search(&whole, &queries));
    // Old generations are gone: the lock file, the manifest, four code sets, vectors, params.
    assert_eq!(
        std::fs::read_dir(t.path()).unwrap().count(),
        1 + 1 + 4 + 1 + 1
    );
}

fn saved() -> (tempfile::TempDir, Vec<String>) {
    let (base, _) = data();
    let t = tempfile::tempdir().unwrap();
    Index::build(&spec(Metric::Cosine), base.view())
        .unwrap()
        .save(t.path())
        .unwrap();
    let mut files: Vec<String> = std::fs::read_dir(t.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|f| f != rewa::index::format::LOCK_FILE)
        .collect();
    files.sort();
    (t, files)
}

fn copy(from: &Path) -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), t.path().join(e.file_name())).unwrap();
    }
    t
}

#[test]
fn damaged_files_get_their_errors() {
    let (good, files) = saved();
    assert!(Index::open(good.path()).is_ok());
    for f in files.iter().filter(|f| *f != "manifest.json") {
        // Truncated by one byte.
        let t = copy(good.path());
        let p = t.path().join(f);
        let b = std::fs::read(&p).unwrap();
        std::fs::write(&p, &b[..b.len() - 1]).unwrap();
        assert!(
            matches!(Index::open(t.path()), Err(Error::Corrupt { path, .. }) if path == p),
            "truncated {f}"
        );
        // One flipped byte in the payload.
        let t = copy(good.path());
        let p = t.path().join(f);
        let mut b = std::fs::read(&p).unwrap();
        let at = b.len() - 3;
        b[at] ^= 0x10;
        std::fs::write(&p, &b).unwrap();
        assert!(
            matches!(Index::open(t.path()), Err(Error::Corrupt { path, reason }) if path == p && reason.contains("checksum")),
            "flipped {f}"
        );
        // Missing.
        let t = copy(good.path());
        std::fs::remove_file(t.path().join(f)).unwrap();
        assert!(
            matches!(Index::open(t.path()), Err(Error::Io { .. })),
            "missing {f}"
        );
    }
    for f in files
        .iter()
        .filter(|f| f.ends_with(".bin") || f.ends_with(".f32"))
    {
        // Wrong magic.
        let t = copy(good.path());
        let p = t.path().join(f);
        let mut b = std::fs::read(&p).unwrap();
        b[0] = b'X';
        std::fs::write(&p, &b).unwrap();
        assert!(
            matches!(Index::open(t.path()), Err(Error::Corrupt { reason, .. }) if reason.contains("magic")),
            "magic {f}"
        );
        // A future version in the header.
        let t = copy(good.path());
        let p = t.path().join(f);
        let mut b = std::fs::read(&p).unwrap();
        b[8..12].copy_from_slice(&99u32.to_le_bytes());
        std::fs::write(&p, &b).unwrap();
        assert!(
            matches!(
                Index::open(t.path()),
                Err(Error::Incompatible { found: 99, .. })
            ),
            "version {f}"
        );
    }
    // A manifest from the future, one that is not JSON, and one that disagrees with the data.
    let edit = |f: &dyn Fn(String) -> String| {
        let t = copy(good.path());
        let p = t.path().join("manifest.json");
        std::fs::write(&p, f(std::fs::read_to_string(&p).unwrap())).unwrap();
        t
    };
    let t = edit(&|s| s.replace("\"format_version\": 3", "\"format_version\": 7"));
    assert!(matches!(
        Index::open(t.path()),
        Err(Error::Incompatible { found: 7, .. })
    ));
    let t = edit(&|s| s[..s.len() / 2].to_string());
    assert!(matches!(Index::open(t.path()), Err(Error::Corrupt { .. })));
    let t = edit(&|s| s.replace("\"count\": 800", "\"count\": 799"));
    assert!(
        matches!(Index::open(t.path()), Err(Error::Corrupt { .. })),
        "count disagrees"
    );
    let t = edit(&|s| s.replace("\"dim\": 48", "\"dim\": 47"));
    assert!(
        matches!(Index::open(t.path()), Err(Error::Corrupt { .. })),
        "dim disagrees"
    );
    // Not an index at all.
    let empty = tempfile::tempdir().unwrap();
    assert!(matches!(Index::open(empty.path()), Err(Error::Io { .. })));
}

#[test]
fn queries_of_wrong_dimension() {
    let (good, _) = saved();
    let index = Index::open(good.path()).unwrap();
    assert!(matches!(
        index.search(&[0.5; 47], &SearchParams::default()),
        Err(Error::DimMismatch {
            expected: 48,
            got: 47
        })
    ));
}

#[test]
fn search_on_a_chosen_pool_returns_what_the_global_pool_does() {
    let (base, queries) = data();
    let index = Index::build(&spec(Metric::Cosine), base.view()).unwrap();
    let p = SearchParams::default();
    let want = index.search_batch(queries.view(), &p).unwrap();
    for threads in [1, 3] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        assert_eq!(
            index.search_batch_on(&pool, queries.view(), &p).unwrap(),
            want
        );
        // one query at a time on one thread, as a server worker would
        let one = index
            .search_batch_on(&pool, queries.view().slice(3, 4), &p)
            .unwrap();
        assert_eq!(one[0], want[3]);
    }
}
