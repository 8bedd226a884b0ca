// Corpus ids and the text model of an index built from text: kept through save and open and
// through adds, checked on open, and refused when they would name two rows.

use rewa::testutil::gaussian;
use rewa::{Error, Index, IndexSpec, Metric, TextModel};

fn spec() -> IndexSpec {
    IndexSpec {
        metric: Metric::Cosine,
        pipeline: "hadamard64+sign:20,exact:5".parse().unwrap(),
        seed: 1,
    }
}

fn ids(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

fn model() -> TextModel {
    TextModel {
        dir: "/models/all-MiniLM-L6-v2".into(),
        weights_sha256: "ab".repeat(32),
        max_seq_len: 256,
        precision: "f32".into(),
    }
}

/// The precision the documents were embedded in survives a save; `f32` (the default, and
/// what an index from before int8 holds) is not written, so such indexes read as before.
#[test]
fn precision_is_recorded_and_f32_left_unwritten() {
    for p in ["f32", "int8"] {
        let t = tempfile::tempdir().unwrap();
        let mut index = named();
        let m = TextModel {
            precision: p.into(),
            ..model()
        };
        index.set_text_model(Some(m.clone()));
        index.save(t.path()).unwrap();
        assert_eq!(Index::open(t.path()).unwrap().text_model(), Some(&m));
        let mut written = String::new();
        for e in std::fs::read_dir(t.path()).unwrap() {
            let path = e.unwrap().path();
            if path.is_file() {
                written.push_str(&String::from_utf8_lossy(&std::fs::read(path).unwrap()));
            }
        }
        assert!(
            written.contains("max_seq_len"),
            "the record is in the index's files"
        );
        assert_eq!(written.contains("\"precision\""), p == "int8", "{p}");
    }
}

/// An index of 50 rows named d0..d49 with a text model.
fn named() -> Index {
    let v = gaussian(50, 16, 3);
    let p = Metric::Cosine.prepare(v.view()).unwrap();
    let mut index = Index::fit_prepared(&spec(), &p).unwrap();
    index
        .add_with_ids(&p, ids("d", 50), &mut |_, _| {})
        .unwrap();
    index.set_text_model(Some(model()));
    index
}

#[test]
fn ids_and_model_survive_save_open_and_add() {
    let t = tempfile::tempdir().unwrap();
    let mut index = named();
    index.save(t.path()).unwrap();
    let mut opened = Index::open(t.path()).unwrap();
    assert_eq!(opened.doc_ids(), Some(&ids("d", 50)[..]));
    assert_eq!(opened.text_model(), Some(&model()));
    let more = gaussian(7, 16, 4);
    let p = Metric::Cosine.prepare(more.view()).unwrap();
    opened
        .add_with_ids(&p, ids("n", 7), &mut |_, _| {})
        .unwrap();
    index.add_with_ids(&p, ids("n", 7), &mut |_, _| {}).unwrap();
    opened.save(t.path()).unwrap();
    let again = Index::open(t.path()).unwrap();
    assert_eq!(again.doc_ids(), index.doc_ids());
    assert_eq!(again.len(), 57);
    // the new rows find themselves, and their ids name them
    let params = rewa::SearchParams {
        filter: None,
        k: 5,
        pipeline: None,
    };
    let hits = again.search(more.row(3), &params).unwrap();
    assert_eq!(again.doc_ids().unwrap()[hits[0].id as usize], "n3");
    let manifest = std::fs::read_to_string(t.path().join("manifest.json")).unwrap();
    assert!(manifest.contains("\"format_version\": 3"), "{manifest}");
    // the add wrote one new segment with its own corpus ids file; the first is named again
    assert!(
        manifest.contains("seg0-docids.txt") && manifest.contains("seg1-docids.txt"),
        "{manifest}"
    );
    assert!(manifest.contains(&"ab".repeat(32)), "{manifest}");
}

#[test]
fn an_index_without_ids_writes_no_ids_files() {
    let t = tempfile::tempdir().unwrap();
    let index = Index::build(&spec(), gaussian(30, 16, 5).view()).unwrap();
    index.save(t.path()).unwrap();
    let manifest = std::fs::read_to_string(t.path().join("manifest.json")).unwrap();
    assert!(manifest.contains("\"has_doc_ids\": false"), "{manifest}");
    assert!(!manifest.contains("docids"), "{manifest}");
    assert_eq!(Index::open(t.path()).unwrap().doc_ids(), None);
}

#[test]
fn bad_ids_are_refused_and_nothing_is_added() {
    let mut index = named();
    let v = gaussian(3, 16, 6);
    let p = Metric::Cosine.prepare(v.view()).unwrap();
    let bad = |mut index: Index, ids: Vec<String>, needle: &str| {
        let e = index.add_with_ids(&p, ids, &mut |_, _| {}).unwrap_err();
        assert!(matches!(e, Error::InvalidInput(_)), "{e}");
        assert!(e.to_string().contains(needle), "{e}");
        assert_eq!(index.len(), 50);
        assert_eq!(index.doc_ids().unwrap().len(), 50);
    };
    bad(
        index.clone(),
        vec!["x".into(), "d7".into(), "y".into()],
        "\"d7\" names two rows",
    );
    bad(
        index.clone(),
        vec!["x".into(), "x".into(), "y".into()],
        "\"x\" names two rows",
    );
    bad(
        index.clone(),
        vec!["x".into(), "".into(), "y".into()],
        "empty",
    );
    bad(
        index.clone(),
        vec!["x".into(), "a\nb".into(), "y".into()],
        "line break",
    );
    bad(index.clone(), vec!["x".into()], "1 ids for 3 vectors");
    // bare vectors into a named index, ids into an unnamed one
    let e = index.add_prepared(&p, &mut |_, _| {}).unwrap_err();
    assert!(e.to_string().contains("corpus ids"), "{e}");
    let mut plain = Index::build(&spec(), gaussian(30, 16, 5).view()).unwrap();
    let e = plain
        .add_with_ids(&p, ids("z", 3), &mut |_, _| {})
        .unwrap_err();
    assert!(e.to_string().contains("have no corpus ids"), "{e}");
    assert_eq!(plain.len(), 30);
}

#[test]
fn a_damaged_ids_file_is_named_on_open() {
    let t = tempfile::tempdir().unwrap();
    named().save(t.path()).unwrap();
    let f = t.path().join("seg0-docids.txt");
    let good = std::fs::read(&f).unwrap();
    // a changed byte: checksum
    let mut b = good.clone();
    b[3] ^= 1;
    std::fs::write(&f, &b).unwrap();
    let e = Index::open(t.path()).unwrap_err();
    assert!(matches!(e, Error::Corrupt { .. }), "{e}");
    assert!(
        e.to_string().contains("seg0-docids.txt") && e.to_string().contains("checksum"),
        "{e}"
    );
    // a missing file
    std::fs::remove_file(&f).unwrap();
    let e = Index::open(t.path()).unwrap_err();
    assert!(e.to_string().contains("seg0-docids.txt"), "{e}");
}
