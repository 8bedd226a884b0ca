// Streaming builds (`Index::build_from_file`): read, encoded and written a chunk at a time,
// they equal an in-memory build when the sample is the whole file; the staged vectors file is
// renamed into place by the save, and a failed or unsaved build leaves no index behind.

use rewa::index::WriteLock;
use rewa::io::{write_npy_f32, VectorFile};
use rewa::testutil::clusters;
use rewa::{Hit, Index, IndexSpec, Metric, SearchParams, StreamOptions, Vectors};
use std::path::Path;
use std::time::Duration;

fn search(i: &Index, q: &Vectors) -> Vec<Vec<Hit>> {
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

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn a_streamed_build_equals_the_in_memory_build_and_adopts_its_staged_vectors() {
    let (base, _, queries, _) = clusters(30, 60, 24, 0.3, 5);
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("base.npy");
    write_npy_f32(&input, &base).unwrap();
    let file = VectorFile::open(&input).unwrap();
    for p in [
        "hadamard64+sign:80,exact:10",
        "ivf8/3+pq12x4:50,exact:10",
        "ivf8r/8+opq8+pq8:50,int8:20",
    ] {
        let spec = IndexSpec {
            metric: Metric::Cosine,
            pipeline: p.parse().unwrap(),
            seed: 7,
        };
        let dir = tmp.path().join(p.replace(['/', '+', ':', ','], "_"));
        let lock = WriteLock::acquire(&dir, Duration::ZERO).unwrap();
        // chunks of 250 rows: lists and codes gathered over 8 chunks
        let opts = StreamOptions {
            train_sample: 10_000,
            chunk: 250,
        };
        let mut calls = Vec::new();
        let streamed = Index::build_from_file(&spec, &file, None, &opts, &lock, &mut |d, t| {
            calls.push((d, t))
        })
        .unwrap();
        assert_eq!(calls.len(), 8, "{p}");
        assert_eq!(*calls.last().unwrap(), (1800, 1800));
        assert!(
            !dir.join("manifest.json").exists(),
            "no index before the save"
        );
        let memory = Index::build(&spec, base.view()).unwrap();
        assert_eq!(
            search(&streamed, &queries),
            search(&memory, &queries),
            "{p}"
        );
        streamed.save_locked(&lock).unwrap();
        drop(lock);
        let files = names(&dir);
        assert!(!files.iter().any(|f| f.contains("staged")), "{files:?}");
        assert!(!files.iter().any(|f| f == "pending.txt"), "{files:?}");
        let opened = Index::open(&dir).unwrap();
        assert_eq!(search(&opened, &queries), search(&memory, &queries), "{p}");
        let s = opened.summary(None).unwrap();
        let has_vectors = p.contains("exact");
        assert_eq!(s.vector_bytes, if has_vectors { 1800 * 24 * 4 } else { 0 });
        assert!(
            s.resident_bytes > 0 && s.resident_bytes < 1800 * 24 * 4,
            "{p}: {s:?}"
        );
    }
}

#[test]
fn a_sample_smaller_than_the_file_still_fits_and_finds_the_neighbours() {
    let (base, _, queries, _) = clusters(40, 100, 32, 0.3, 6);
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("base.fvecs");
    rewa::io::write_fvecs(&input, &base).unwrap();
    let file = VectorFile::open(&input).unwrap();
    let spec = IndexSpec {
        metric: Metric::L2,
        pipeline: "ivf16/16+pq16x4:100,exact:10".parse().unwrap(),
        seed: 1,
    };
    let dir = tmp.path().join("ix");
    let lock = WriteLock::acquire(&dir, Duration::ZERO).unwrap();
    let opts = StreamOptions {
        train_sample: 700,
        chunk: 999,
    };
    let ix = Index::build_from_file(&spec, &file, None, &opts, &lock, &mut |_, _| {}).unwrap();
    ix.save_locked(&lock).unwrap();
    assert_eq!(ix.len(), 4000);
    // every list probed and an exact rerank of 100: the true neighbours
    let truth = rewa::eval::ground_truth(
        &Metric::L2.prepare(base.view()).unwrap(),
        &Metric::L2.prepare(queries.view()).unwrap(),
        10,
    );
    let got = search(&Index::open(&dir).unwrap(), &queries);
    let r = rewa::eval::recall_at_k(&got, &truth, 10);
    // measured 1.000 (4,000 clustered 32-d vectors at noise 0.3)
    assert!(r > 0.97, "recall {r}");
}

#[test]
fn a_failed_build_removes_its_staged_file_and_an_unsaved_one_is_cleaned_by_the_next_save() {
    let (mut base, _, _, _) = clusters(10, 50, 8, 0.3, 2);
    base.as_mut_slice()[430 * 8 + 3] = f32::INFINITY;
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("base.npy");
    write_npy_f32(&input, &base).unwrap();
    let file = VectorFile::open(&input).unwrap();
    let spec = IndexSpec {
        metric: Metric::L2,
        pipeline: "hadamard16+sign:50,exact:10".parse().unwrap(),
        seed: 1,
    };
    let dir = tmp.path().join("ix");
    let lock = WriteLock::acquire(&dir, Duration::ZERO).unwrap();
    let opts = StreamOptions {
        train_sample: 100,
        chunk: 100,
    };
    let e = Index::build_from_file(&spec, &file, None, &opts, &lock, &mut |_, _| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("row 430"), "{e}");
    assert!(
        !names(&dir).iter().any(|f| f.contains("staged")),
        "{:?}",
        names(&dir)
    );
    // a build never saved (a kill before its save) leaves its staged file, named in
    // pending.txt; the next save in the directory deletes it
    let good = tmp.path().join("good.npy");
    write_npy_f32(
        &good,
        &Vectors::new(8, base.as_slice()[..400 * 8].to_vec()).unwrap(),
    )
    .unwrap();
    let file = VectorFile::open(&good).unwrap();
    let unsaved = Index::build_from_file(&spec, &file, None, &opts, &lock, &mut |_, _| {}).unwrap();
    drop(unsaved);
    assert!(names(&dir).iter().any(|f| f.contains("staged")));
    assert!(Index::open(&dir).is_err(), "no manifest: no index");
    Index::build(&spec, base.view().slice(0, 400))
        .unwrap()
        .save_locked(&lock)
        .unwrap();
    let files = names(&dir);
    assert!(!files.iter().any(|f| f.contains("staged")), "{files:?}");
    assert_eq!(Index::open(&dir).unwrap().len(), 400);
}
