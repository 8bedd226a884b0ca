// Appends write new segments only; deletes are tombstones that searches never return; compact
// rewrites without them; ids never change. Every layout answers as one segment would.

use rewa::testutil::gaussian;
use rewa::{Error, Hit, Index, IndexSpec, Metric, SearchParams, Vectors};
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

const PIPES: [&str; 4] = [
    "hadamard64+sign:80,exact:10",
    "opq8+pq8:60,exact:10",
    "ivf8/8+hadamard64+asign:50,exact:10",
    "ivf8/3+hadamard64+asign:50,exact:10",
];

fn spec() -> IndexSpec {
    IndexSpec {
        metric: Metric::L2,
        pipeline: "hadamard64+sign:80,opq8+pq8:60,exact:10".parse().unwrap(),
        seed: 4,
    }
}

fn spec_ivf() -> IndexSpec {
    IndexSpec {
        metric: Metric::L2,
        pipeline: "ivf8/3+hadamard64+asign:50,exact:10".parse().unwrap(),
        seed: 4,
    }
}

fn search(i: &Index, q: &Vectors, p: &str, k: usize) -> Vec<Vec<Hit>> {
    i.search_batch(
        q.view(),
        &SearchParams {
            filter: None,
            k,
            pipeline: Some(p.parse().unwrap()),
        },
    )
    .unwrap()
}

/// name -> (inode, mtime ns, length) of every file in `dir`
fn stat(dir: &Path) -> BTreeMap<String, (u64, i64, u64)> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            (
                e.file_name().into_string().unwrap(),
                (m.ino(), m.mtime_nsec() + m.mtime() * 1_000_000_000, m.len()),
            )
        })
        .collect()
}

/// An index fitted on `fit` holding `rows` in one segment (the reference layout).
fn one_segment(sp: &IndexSpec, fit: &Vectors, rows: &Vectors) -> Index {
    let mut i = Index::fit(sp, fit.view()).unwrap();
    i.add(rows.view()).unwrap();
    assert_eq!(i.segments().len(), 1);
    i
}

#[test]
fn an_add_writes_only_its_segment_and_answers_as_one_segment() {
    let all = gaussian(1200, 24, 1);
    let queries = gaussian(30, 24, 2);
    let first = Vectors::new(24, all.as_slice()[..1000 * 24].to_vec()).unwrap();
    let more = Vectors::new(24, all.as_slice()[1000 * 24..].to_vec()).unwrap();
    let t = tempfile::tempdir().unwrap();
    Index::build(&spec(), first.view())
        .unwrap()
        .save(t.path())
        .unwrap();
    let before = stat(t.path());
    let mut opened = Index::open(t.path()).unwrap();
    opened.add(more.view()).unwrap();
    assert_eq!(opened.segments().len(), 2);
    opened.save(t.path()).unwrap();
    let after = stat(t.path());
    // every segment-0 file is the same file, untouched
    for (name, st) in before.iter().filter(|(n, _)| n.starts_with("seg0-")) {
        assert_eq!(after.get(name), Some(st), "{name} was rewritten");
    }
    let new: Vec<&String> = after.keys().filter(|n| !before.contains_key(*n)).collect();
    assert!(
        new.iter()
            .all(|n| n.starts_with("seg1-") || n.starts_with("deleted-")),
        "{new:?}"
    );
    let written: u64 = new.iter().map(|n| after[*n].2).sum();
    let seg0: u64 = before
        .iter()
        .filter(|(n, _)| n.starts_with("seg0-"))
        .map(|(_, s)| s.2)
        .sum();
    assert!(
        written * 4 < seg0,
        "an add of 20% wrote {written} bytes beside {seg0}"
    );
    let again = Index::open(t.path()).unwrap();
    assert_eq!((again.len(), again.segments().len()), (1200, 2));
    let reference = one_segment(&spec(), &first, &all);
    for p in &PIPES[..2] {
        assert_eq!(
            search(&again, &queries, p, 10),
            search(&reference, &queries, p, 10),
            "{p}"
        );
    }
}

#[test]
fn partitioned_segments_answer_as_one() {
    let all = gaussian(1200, 24, 1);
    let queries = gaussian(30, 24, 2);
    let first = Vectors::new(24, all.as_slice()[..900 * 24].to_vec()).unwrap();
    let more = Vectors::new(24, all.as_slice()[900 * 24..].to_vec()).unwrap();
    let sp = IndexSpec {
        pipeline: "ivf8/8+flat:10".parse().unwrap(),
        ..spec()
    };
    let t = tempfile::tempdir().unwrap();
    Index::build(&sp, first.view())
        .unwrap()
        .save(t.path())
        .unwrap();
    let mut opened = Index::open(t.path()).unwrap();
    opened.add(more.view()).unwrap();
    opened.save(t.path()).unwrap();
    let again = Index::open(t.path()).unwrap();
    assert_eq!(again.segments().len(), 2);
    let reference = one_segment(&sp, &first, &all);
    for p in ["ivf8/8+flat:10", "ivf8/2+flat:10"] {
        assert_eq!(
            search(&again, &queries, p, 10),
            search(&reference, &queries, p, 10),
            "{p}"
        );
    }
}

#[test]
fn deleted_ids_never_come_back_and_other_ids_stay() {
    let base = gaussian(800, 24, 3);
    let queries = gaussian(20, 24, 4);
    for sp in [spec(), spec_ivf()] {
        let mut index = Index::build(&sp, base.view()).unwrap();
        let full = search(&index, &queries, "exact:10", 10);
        // delete every query's two nearest, and some others
        let mut gone: Vec<u32> = full.iter().flat_map(|h| [h[0].id, h[1].id]).collect();
        gone.extend([0, 1, 2, 799]);
        let n = index.delete(&gone).unwrap();
        gone.sort_unstable();
        gone.dedup();
        assert_eq!(n, gone.len());
        assert_eq!(index.len(), 800 - gone.len());
        assert_eq!(
            index.delete(&gone).unwrap(),
            0,
            "deleting twice deletes nothing"
        );
        let e = index.delete(&[5, 800]).unwrap_err();
        assert!(
            matches!(e, Error::InvalidInput(_)) && e.to_string().contains("never given out"),
            "{e}"
        );
        assert!(
            !index.deleted().contains(&5),
            "nothing is deleted when one id is bad"
        );
        let exact = search(&index, &queries, "exact:10", 10);
        // the exact answer without the deleted rows is the old ranking with them removed
        let all = search(
            &Index::build(&sp, base.view()).unwrap(),
            &queries,
            "exact:40",
            40,
        );
        for (got, was) in exact.iter().zip(&all) {
            let want: Vec<Hit> = was
                .iter()
                .filter(|h| gone.binary_search(&h.id).is_err())
                .take(10)
                .copied()
                .collect();
            assert_eq!(got, &want);
        }
        let pipes: Vec<&str> = PIPES
            .iter()
            .copied()
            .filter(|p| p.starts_with("ivf") == sp.pipeline.to_string().starts_with("ivf"))
            .collect();
        let t = tempfile::tempdir().unwrap();
        index.save(t.path()).unwrap();
        let opened = Index::open(t.path()).unwrap();
        assert_eq!(opened.deleted(), &gone[..]);
        for p in &pipes {
            let hits = search(&opened, &queries, p, 10);
            assert!(
                hits.iter()
                    .flatten()
                    .all(|h| gone.binary_search(&h.id).is_err()),
                "{p}"
            );
            assert_eq!(hits, search(&index, &queries, p, 10), "{p}");
            // asking for every row returns every live row once
            let every = search(
                &opened,
                &queries.view().slice(0, 1).to_owned(),
                &p.replace(":10", ":1000")
                    .replace(":80", ":1000")
                    .replace(":60", ":1000")
                    .replace(":50", ":1000"),
                1000,
            );
            if !p.contains("/3") {
                let mut ids: Vec<u32> = every[0].iter().map(|h| h.id).collect();
                ids.sort_unstable();
                assert_eq!(ids.len(), 800 - gone.len(), "{p}");
            }
        }
        // compaction: one segment without the deleted rows, same answers, same ids
        let mut compacted = opened.clone();
        compacted.compact();
        assert_eq!(compacted.segments().len(), 1);
        assert_eq!(compacted.segments()[0].rows(), 800 - gone.len());
        assert!(compacted.deleted().is_empty());
        for p in &pipes {
            assert_eq!(
                search(&compacted, &queries, p, 10),
                search(&opened, &queries, p, 10),
                "{p}"
            );
        }
        compacted.save(t.path()).unwrap();
        let reopened = Index::open(t.path()).unwrap();
        assert_eq!(reopened.len(), 800 - gone.len());
        assert_eq!(reopened.next_id(), 800);
        for p in &pipes {
            assert_eq!(
                search(&reopened, &queries, p, 10),
                search(&opened, &queries, p, 10),
                "{p}"
            );
        }
        let names: Vec<String> = stat(t.path()).into_keys().collect();
        assert!(
            names.iter().any(|n| n.ends_with("-rowids.bin")),
            "a compacted segment with gaps records its ids: {names:?}"
        );
        assert!(
            !names.iter().any(|n| n.starts_with("seg0-")),
            "the old segment's files are gone: {names:?}"
        );
        // new rows get new ids after the gaps
        let mut grown = reopened;
        grown.add(gaussian(5, 24, 9).view()).unwrap();
        assert_eq!(grown.next_id(), 805);
        let hit = grown
            .search(
                gaussian(5, 24, 9).row(2),
                &SearchParams {
                    filter: None,
                    k: 1,
                    pipeline: Some("exact:1".parse().unwrap()),
                },
            )
            .unwrap();
        assert_eq!(hit[0].id, 802);
    }
}

#[test]
fn small_adds_keep_few_segments() {
    let base = gaussian(1000, 24, 5);
    let t = tempfile::tempdir().unwrap();
    Index::build(&spec(), base.view())
        .unwrap()
        .save(t.path())
        .unwrap();
    let queries = gaussian(10, 24, 6);
    let mut all = base.as_slice().to_vec();
    for i in 0..12 {
        let more = gaussian(50, 24, 100 + i);
        all.extend_from_slice(more.as_slice());
        let mut index = Index::open(t.path()).unwrap();
        index.add(more.view()).unwrap();
        index.save(t.path()).unwrap();
    }
    let index = Index::open(t.path()).unwrap();
    let sizes: Vec<usize> = index.segments().iter().map(|s| s.rows()).collect();
    assert_eq!(sizes.iter().sum::<usize>(), 1600);
    assert!(sizes.len() <= 4, "{sizes:?}");
    let all = Vectors::new(24, all).unwrap();
    let fit = Vectors::new(24, base.as_slice().to_vec()).unwrap();
    assert_eq!(
        search(&index, &queries, PIPES[0], 10),
        search(&one_segment(&spec(), &fit, &all), &queries, PIPES[0], 10)
    );
}

#[test]
fn corpus_ids_can_be_deleted_and_added_again() {
    let v = gaussian(40, 24, 7);
    let p = Metric::L2.prepare(v.view()).unwrap();
    let ids: Vec<String> = (0..40).map(|i| format!("doc{i}")).collect();
    let mut index = Index::fit_prepared(&spec(), &p).unwrap();
    index.add_with_ids(&p, ids.clone(), &mut |_, _| {}).unwrap();
    assert_eq!(
        index
            .delete_doc_ids(&["doc3".into(), "doc7".into()])
            .unwrap(),
        2
    );
    let e = index.delete_doc_ids(&["doc3".into()]).unwrap_err();
    assert!(e.to_string().contains("\"doc3\""), "{e}");
    // doc3 again, as a new row with a new id
    let one = Metric::L2.prepare(v.view().slice(3, 4)).unwrap();
    index
        .add_with_ids(&one, vec!["doc3".into()], &mut |_, _| {})
        .unwrap();
    let hit = index
        .search(
            v.row(3),
            &SearchParams {
                filter: None,
                k: 1,
                pipeline: Some("exact:1".parse().unwrap()),
            },
        )
        .unwrap();
    assert_eq!(hit[0].id, 40);
    assert_eq!(index.doc_ids().unwrap()[40], "doc3");
    let t = tempfile::tempdir().unwrap();
    index.save(t.path()).unwrap();
    let mut opened = Index::open(t.path()).unwrap();
    assert_eq!(opened.doc_ids().unwrap()[40], "doc3");
    opened.compact();
    opened.save(t.path()).unwrap();
    let again = Index::open(t.path()).unwrap();
    assert_eq!(again.len(), 39);
    assert_eq!(again.doc_ids().unwrap()[40], "doc3");
    assert_eq!(again.doc_ids().unwrap()[8], "doc8");
}

#[test]
fn adds_after_a_compaction_never_reuse_deleted_ids() {
    let v = gaussian(12, 24, 8);
    let p = Metric::L2.prepare(v.view()).unwrap();
    let ids: Vec<String> = (0..10).map(|i| format!("doc{i}")).collect();
    let head = Metric::L2.prepare(v.view().slice(0, 10)).unwrap();
    let exact1 = SearchParams {
        filter: None,
        k: 1,
        pipeline: Some("exact:1".parse().unwrap()),
    };
    // the last id deleted, then compacted in memory: the next row is 10, not 9
    let mut index = Index::fit_prepared(&spec(), &p).unwrap();
    index
        .add_with_ids(&head, ids.clone(), &mut |_, _| {})
        .unwrap();
    index.delete(&[9]).unwrap();
    index.compact();
    let one = Metric::L2.prepare(v.view().slice(10, 11)).unwrap();
    index
        .add_with_ids(&one, vec!["new".into()], &mut |_, _| {})
        .unwrap();
    assert_eq!(index.next_id(), 11);
    let hit = index.search(v.row(10), &exact1).unwrap();
    assert_eq!(hit[0].id, 10);
    assert_eq!(index.doc_ids().unwrap()[10], "new");
    // every row deleted, then compacted: ids go on from next_id
    let mut all = Index::build(&spec(), v.view().slice(0, 10).to_owned().view()).unwrap();
    all.delete(&(0..10).collect::<Vec<u32>>()).unwrap();
    all.compact();
    assert_eq!(all.len(), 0);
    all.add(v.view().slice(10, 12)).unwrap();
    let hit = all.search(v.row(11), &exact1).unwrap();
    assert_eq!((hit[0].id, all.len(), all.next_id()), (11, 2, 12));
    let t = tempfile::tempdir().unwrap();
    all.save(t.path()).unwrap();
    let opened = Index::open(t.path()).unwrap();
    assert_eq!(opened.search(v.row(11), &exact1).unwrap()[0].id, 11);
}

#[test]
fn damaged_segment_bounds_are_refused_not_a_panic() {
    let t = tempfile::tempdir().unwrap();
    let mut index = Index::build(&spec(), gaussian(100, 24, 9).view()).unwrap();
    index.add(gaussian(60, 24, 10).view()).unwrap();
    index.save(t.path()).unwrap();
    let mut reopened = Index::open(t.path()).unwrap();
    reopened.add(gaussian(10, 24, 11).view()).unwrap();
    reopened.save(t.path()).unwrap();
    let mpath = t.path().join("manifest.json");
    let good = std::fs::read_to_string(&mpath).unwrap();
    let v: serde_json::Value = serde_json::from_str(&good).unwrap();
    assert!(v["segments"].as_array().unwrap().len() >= 2, "{good}");
    for (what, start) in [("overlap", 50u64), ("past next_id", 4_294_967_290)] {
        let mut bad = v.clone();
        bad["segments"][1]["start"] = start.into();
        std::fs::write(&mpath, serde_json::to_vec(&bad).unwrap()).unwrap();
        match Index::open(t.path()) {
            Err(Error::Corrupt { reason, .. }) => {
                assert!(reason.contains("holds ids"), "{what}: {reason}")
            }
            other => panic!("{what}: {other:?}"),
        }
    }
    std::fs::write(&mpath, good).unwrap();
    assert_eq!(Index::open(t.path()).unwrap().len(), 170);
}
