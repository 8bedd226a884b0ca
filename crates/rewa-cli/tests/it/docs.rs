// Documents from the command line: `build/add --base --fields F.jsonl`, `search --filter
// --show --mode bm25|hybrid`, deletes removing documents, clear errors for bad filters and
// for document options on an index without documents.

use crate::common::{fails, json, ok, ok_args};
use serde_json::{json, Value};
use std::path::Path;

/// `n` records: a keyword `k` (a, b, c, d in turn), a number `n`, tags, and a text naming
/// `word<i % 10>`.
fn write_fields(path: &Path, first: usize, n: usize) {
    let lines: Vec<String> = (first..first + n)
        .map(|i| {
            let k = ["a", "b", "c", "d"][i % 4];
            json!({
                "k": k,
                "n": i,
                "tags": if i % 3 == 0 { json!(["x", "y"]) } else { json!(["y"]) },
                "text": format!("record {i} mentions word{} and ünïcode ✓\ttab", i % 10),
            })
            .to_string()
        })
        .collect();
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

/// TSV rows of `rewa search --show`: (query, id, fields).
fn shown(tsv: &str) -> Vec<(String, u32, Value)> {
    let mut lines = tsv.lines();
    assert_eq!(lines.next(), Some("query\trank\tid\tscore\tfields"));
    lines
        .map(|l| {
            let c: Vec<&str> = l.split('\t').collect();
            assert_eq!(c.len(), 5, "{l}");
            (
                c[0].to_string(),
                c[2].parse().unwrap(),
                serde_json::from_str(c[4]).unwrap(),
            )
        })
        .collect()
}

fn setup(d: &Path) {
    ok(
        "synth --classes 30 --per-class 40 --dim 32 --new-classes 0 --seed 4 --out a",
        d,
    );
    write_fields(&d.join("f.jsonl"), 0, 1200);
    ok(
        "build --base a/base.npy --fields f.jsonl --pipeline hadamard128+sign:200,exact:20 --out idx",
        d,
    );
}

#[test]
fn fields_filters_and_bm25_from_the_command_line() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    setup(d);
    let q = "a/queries_same.npy";
    // a filter: every hit passes it, and there are k of them
    let filter = r#"{"must": [{"key": "k", "match": {"value": "b"}}, {"key": "n", "range": {"gte": 100, "lt": 900}}], "must_not": [{"key": "tags", "match": {"value": "x"}}]}"#;
    let out = ok_args(
        &[
            "search",
            "--index",
            "idx",
            "--queries",
            q,
            "--k",
            "7",
            "--filter",
            filter,
            "--show",
            "all",
        ],
        d,
    );
    let rows = shown(&out);
    assert!(rows.len() >= 7 * 10, "{}", rows.len());
    for (_, id, f) in &rows {
        let n = f["n"].as_u64().unwrap();
        assert_eq!(n, *id as u64, "row {id} shows the fields of {n}");
        assert_eq!(f["k"], "b");
        assert!((100..900).contains(&n) && n % 3 != 0, "{f}");
        // stored exactly: unicode and the tab (escaped in the TSV's JSON) come back
        assert_eq!(
            f["text"],
            format!("record {n} mentions word{} and ünïcode ✓\ttab", n % 10)
        );
    }
    // the same filter from a file, and only some fields shown, as JSON
    std::fs::write(d.join("filter.json"), filter).unwrap();
    let j = json(
        "search --index idx --queries a/queries_same.npy --k 3 --filter @filter.json --show k",
        d,
    );
    assert!(j["filter"]["rows"].as_u64().unwrap() > 0, "{j}");
    let hits = j["hits"].as_array().unwrap();
    assert_eq!(hits[0].as_array().unwrap().len(), 3);
    assert_eq!(hits[0][0]["fields"], json!({"k": "b"}));
    // BM25: the words of the stored text; every hit holds the word
    let out = ok_args(
        &[
            "search",
            "--index",
            "idx",
            "--mode",
            "bm25",
            "--text",
            "word7",
            "--text",
            "record 1000",
            "--k",
            "5",
            "--show",
            "text,n",
        ],
        d,
    );
    let rows = shown(&out);
    assert!(rows
        .iter()
        .filter(|r| r.0 == "0")
        .all(|r| r.2["text"].as_str().unwrap().contains("word7")));
    let second: Vec<&(String, u32, Value)> = rows.iter().filter(|r| r.0 == "1").collect();
    assert_eq!(second[0].1, 1000, "{out}");
    // BM25 with a filter: fewer hits than k when fewer rows match
    let out = ok_args(
        &[
            "search",
            "--index",
            "idx",
            "--mode",
            "bm25",
            "--text",
            "word7",
            "--k",
            "50",
            "--show",
            "n",
            "--filter",
            r#"{"must": [{"key": "n", "range": {"lt": 100}}]}"#,
        ],
        d,
    );
    let rows = shown(&out);
    let want: Vec<u32> = (0..100).filter(|i| i % 10 == 7).collect();
    let mut got: Vec<u32> = rows.iter().map(|r| r.1).collect();
    got.sort_unstable();
    assert_eq!(got, want);

    // bad filters name the problem
    let bad = |f: &str, needle: &str| {
        let out = crate::common::run(
            &["search", "--index", "idx", "--queries", q, "--filter", f],
            d,
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{f}: {err}");
        assert!(err.contains(needle), "{f}: wanted {needle:?} in {err}");
    };
    bad(
        r#"{"must": [{"key": "colour", "match": {"value": "red"}}]}"#,
        "unknown field \"colour\"",
    );
    bad(
        r#"{"must": [{"key": "n", "match": {"value": "red"}}]}"#,
        "field \"n\" holds numbers",
    );
    bad(
        r#"{"must": [{"key": "k", "range": {"gt": 1}}]}"#,
        "range on field \"k\"",
    );
    bad(r#"{"must": [{"key": "k""#, "not JSON");
    bad("@missing.json", "--filter @missing.json");
    fails(
        "search --index idx --queries a/queries_same.npy --mode bm25",
        d,
        "--mode bm25 needs query texts",
    );

    // deletes remove the documents: a deleted row is never shown, filtered or found by BM25
    std::fs::write(d.join("del.txt"), "1007\n17\n").unwrap();
    ok("delete --index idx --ids del.txt", d);
    let out = ok_args(
        &[
            "search",
            "--index",
            "idx",
            "--mode",
            "bm25",
            "--text",
            "record 1007",
            "--text",
            "record 17",
            "--k",
            "3",
            "--show",
            "n",
        ],
        d,
    );
    assert!(
        shown(&out).iter().all(|r| r.1 != 1007 && r.1 != 17),
        "{out}"
    );
    ok("compact --index idx", d);
    let out = ok_args(
        &[
            "search",
            "--index",
            "idx",
            "--queries",
            q,
            "--k",
            "20",
            "--show",
            "n",
            "--filter",
            r#"{"must": [{"key": "n", "match": {"any": [17, 1007, 18]}}]}"#,
        ],
        d,
    );
    let ids: Vec<u32> = shown(&out).iter().map(|r| r.1).collect();
    assert!(!ids.is_empty() && ids.iter().all(|&i| i == 18), "{ids:?}");

    // add with fields: the new rows filter and show; without fields they get empty documents
    ok(
        "synth --classes 5 --per-class 40 --dim 32 --new-classes 0 --seed 9 --out b",
        d,
    );
    write_fields(&d.join("g.jsonl"), 1200, 200);
    fails(
        "add --index idx --base b/base.npy --fields f.jsonl",
        d,
        "holds 1200 records, but there are 200 vectors",
    );
    ok("add --index idx --base b/base.npy --fields g.jsonl", d);
    ok("add --index idx --base b/base.npy", d);
    let out = ok_args(
        &[
            "search",
            "--index",
            "idx",
            "--queries",
            "b/queries_same.npy",
            "--k",
            "5",
            "--show",
            "all",
            "--filter",
            r#"{"must": [{"key": "n", "range": {"gte": 1200}}]}"#,
        ],
        d,
    );
    let rows = shown(&out);
    assert!(!rows.is_empty());
    assert!(
        rows.iter()
            .all(|r| (1200..1400).contains(&r.1) && r.2["n"] == r.1),
        "{out}"
    );
    let j = json(
        "search --index idx --queries b/queries_same.npy --k 5 --show all --pipeline exact:5",
        d,
    );
    let empty = j["hits"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|h| h.as_array().unwrap())
        .any(|h| h["id"].as_u64().unwrap() >= 1400 && h["fields"] == json!({}));
    assert!(empty, "rows added without fields show an empty object: {j}");
}

#[test]
fn document_options_need_documents_and_a_rebuild_drops_them() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    setup(d);
    write_fields(&d.join("short.jsonl"), 0, 10);
    fails(
        "build --base a/base.npy --fields short.jsonl --out other",
        d,
        "holds 10 records, but there are 1200 vectors",
    );
    fails(
        "build --base a/base.npy --fields nope.jsonl --out other",
        d,
        "no such file",
    );
    // replaced by an index without documents: the old documents go with it
    ok(
        "build --base a/base.npy --pipeline exact:10 --out idx --force",
        d,
    );
    assert!(!d.join("idx/docs").exists());
    fails(
        "search --index idx --queries a/queries_same.npy --show n",
        d,
        "--show needs stored documents",
    );
    fails(
        "search --index idx --text x --mode bm25",
        d,
        "--mode bm25/hybrid needs stored documents",
    );
}
