// An index held in memory is a writer like any other: it saves only if the directory is still
// at the generation it read, so a stale copy cannot drop another writer's adds and deletes or
// hand their ids out again.

use rewa::index::{check_build_target, WriteLock};
use rewa::testutil::gaussian;
use rewa::{Error, Index, IndexSpec, Metric, SearchParams, Vectors};

fn spec() -> IndexSpec {
    IndexSpec {
        metric: Metric::L2,
        pipeline: "hadamard16+sign:40,exact:10".parse().unwrap(),
        seed: 3,
    }
}

/// The ids of the exact nearest rows to `q`, best first.
fn nearest(i: &Index, q: &[f32], k: usize) -> Vec<u32> {
    let p = SearchParams {
        filter: None,
        k,
        pipeline: Some(format!("exact:{k}").parse().unwrap()),
    };
    i.search(q, &p).unwrap().iter().map(|h| h.id).collect()
}

fn row(v: &Vectors, i: usize) -> &[f32] {
    &v.as_slice()[i * v.dim()..(i + 1) * v.dim()]
}

#[test]
fn a_stale_index_is_refused_and_loses_nothing_acknowledged() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("d");
    let base = gaussian(100, 16, 1);
    Index::build(&spec(), base.view())
        .unwrap()
        .save(&d)
        .unwrap();
    // A reads the index (as `rewa.Index.open` does) ...
    let mut a = Index::open(&d).unwrap();
    assert_eq!(a.generation(), Some(0));
    assert!(a.is_from(&d) && a.is_from(&d.join(".")));
    // ... then other writers add (ids 100..110, acknowledged) and delete id 3
    let theirs = gaussian(10, 16, 2);
    let mut b = Index::open(&d).unwrap();
    b.add(theirs.view()).unwrap();
    b.save(&d).unwrap();
    let mut c = Index::open(&d).unwrap();
    assert_eq!(c.delete(&[3]).unwrap(), 1);
    c.save(&d).unwrap();
    let manifest = std::fs::read(d.join("manifest.json")).unwrap();
    // A adds a row and saves: refused, and nothing is written
    let mine = gaussian(1, 16, 3);
    a.add(mine.view()).unwrap();
    for dir in [d.clone(), d.join(".")] {
        let e = a.save(&dir).unwrap_err();
        assert!(
            matches!(
                e,
                Error::Stale {
                    read: 0,
                    now: 2,
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(
            e.to_string()
                .ends_with("the index changed since it was read (generation 0, now 2): open it again and re-apply your changes"),
            "{e}"
        );
    }
    let lock = WriteLock::acquire(&d, std::time::Duration::ZERO).unwrap();
    assert!(matches!(
        a.save_locked(&lock).unwrap_err(),
        Error::Stale { .. }
    ));
    drop(lock);
    assert_eq!(std::fs::read(d.join("manifest.json")).unwrap(), manifest);
    // reopened and re-applied, the save goes through
    let mut a = Index::open(&d).unwrap();
    a.add(mine.view()).unwrap();
    a.save(&d).unwrap();
    assert_eq!(a.generation(), Some(3));
    // and the same object saves again (a save records the generation it wrote)
    let more = gaussian(1, 16, 4);
    a.add(more.view()).unwrap();
    a.save(&d).unwrap();
    let r = Index::open(&d).unwrap();
    assert_eq!((r.len(), r.next_id(), r.deleted()), (111, 112, &[3u32][..]));
    // every id names one vector: the acknowledged rows keep theirs, the new rows got new ones
    for (v, i, id) in [
        (&theirs, 0, 100),
        (&theirs, 9, 109),
        (&mine, 0, 110),
        (&more, 0, 111),
        (&base, 4, 4),
    ] {
        assert_eq!(nearest(&r, row(v, i), 1), vec![id]);
    }
    // the deleted row stays deleted
    assert!(!nearest(&r, row(&base, 3), 110).contains(&3));
}

#[test]
fn a_rebuilt_directory_with_the_same_generation_number_is_still_another_index() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("d");
    Index::build(&spec(), gaussian(50, 16, 1).view())
        .unwrap()
        .save(&d)
        .unwrap();
    let mut a = Index::open(&d).unwrap();
    std::fs::remove_dir_all(&d).unwrap();
    Index::build(&spec(), gaussian(60, 16, 2).view())
        .unwrap()
        .save(&d)
        .unwrap();
    a.add(gaussian(1, 16, 3).view()).unwrap();
    let e = a.save(&d).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Stale {
                read: 0,
                now: 0,
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(Index::open(&d).unwrap().len(), 60);
    // replacing on purpose is the caller's choice
    let lock = WriteLock::acquire(&d, std::time::Duration::ZERO).unwrap();
    a.replace_locked(&lock).unwrap();
    drop(lock);
    assert_eq!(Index::open(&d).unwrap().len(), 51);
}

#[test]
fn an_index_from_elsewhere_replaces_only_when_asked() {
    let t = tempfile::tempdir().unwrap();
    let (d, e) = (t.path().join("d"), t.path().join("e"));
    let built = Index::build(&spec(), gaussian(50, 16, 1).view()).unwrap();
    assert!(!built.is_from(&d) && built.generation().is_none());
    check_build_target(&d, false, "--force").unwrap();
    built.save(&d).unwrap();
    assert!(built.is_from(&d));
    // a second build into d is refused without force, in the caller's words
    let err = check_build_target(&d, false, "force=True").unwrap_err();
    assert!(matches!(err, Error::InvalidInput(_)), "{err:?}");
    assert!(
        err.to_string().ends_with(&format!(
            "{} already holds an index of 50 vectors; choose another folder, or pass force=True to replace it",
            d.display()
        )),
        "{err}"
    );
    check_build_target(&d, true, "force=True").unwrap();
    // an index opened from d and saved into e is new there, and comes from e afterwards
    let opened = Index::open(&d).unwrap();
    assert!(!opened.is_from(&e));
    opened.save(&e).unwrap();
    assert!(opened.is_from(&e) && !opened.is_from(&d));
}
