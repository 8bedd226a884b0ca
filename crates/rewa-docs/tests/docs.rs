// Stored fields round-trip exactly; filters select exactly the rows a direct evaluation of
// Qdrant's semantics selects; bad filters name their problem; BM25 ranks and filters; deletes
// remove documents; a store ahead of its index is repaired; search fuses dense and BM25.

use rewa::{Index, IndexSpec, Metric, RowFilter};
use rewa_docs::{Docs, Filter, Mode, Query, Record};
use serde_json::{json, Map, Value};

fn obj(v: Value) -> Map<String, Value> {
    v.as_object().unwrap().clone()
}

/// 600 records: a keyword, a number, a boolean, a list of tags, a nested object, a date, and
/// some rows missing some fields.
fn records() -> Vec<Map<String, Value>> {
    let mut next = rewa::testutil::xorshift(3);
    (0..600)
        .map(|i| {
            let mut m = Map::new();
            m.insert(
                "source".into(),
                json!(["pubmed", "arxiv", "web"][(next() % 3) as usize]),
            );
            if i % 7 != 0 {
                m.insert("year".into(), json!(1990 + (next() % 35) as i64));
            }
            m.insert("open".into(), json!(next().is_multiple_of(2)));
            let tags: Vec<&str> = ["a", "b", "c", "d"]
                .into_iter()
                .filter(|_| next().is_multiple_of(3))
                .collect();
            m.insert("tags".into(), json!(tags));
            m.insert(
                "meta".into(),
                json!({"score": (next() % 1000) as f64 / 10.0}),
            );
            m.insert(
                "date".into(),
                json!(format!(
                    "20{:02}-0{}-15T00:00:00Z",
                    next() % 25,
                    1 + next() % 9
                )),
            );
            m.insert(
                "text".into(),
                json!(format!(
                    "document {i} about {}",
                    ["genes", "cells", "proteins"][i % 3]
                )),
            );
            m
        })
        .collect()
}

fn store(dir: &std::path::Path, recs: &[Map<String, Value>]) -> Docs {
    let mut d = Docs::create(dir).unwrap();
    let rs: Vec<Record> = recs.iter().cloned().map(Record::new).collect();
    let h = rs.len().min(250);
    d.add(0, &rs[..h], &[]).unwrap();
    d.add(h as u32, &rs[h..], &[]).unwrap();
    d
}

/// Qdrant's semantics, evaluated directly on one record.
fn eval(f: &Value, r: &Map<String, Value>) -> bool {
    let get = |key: &str| -> Vec<Value> {
        let root = Value::Object(r.clone());
        let mut cur = &root;
        for part in key.split('.') {
            match cur.get(part) {
                Some(x) => cur = x,
                None => return vec![],
            }
        }
        match cur {
            Value::Array(a) => a.clone(),
            Value::Null => vec![],
            x => vec![x.clone()],
        }
    };
    let eq = |a: &Value, b: &Value| match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    };
    let cond = |c: &Value| -> bool {
        if c.get("key").is_none() {
            return eval(c, r);
        }
        let vals = get(c["key"].as_str().unwrap());
        if let Some(m) = c.get("match") {
            if let Some(v) = m.get("value") {
                return vals.iter().any(|x| eq(x, v));
            }
            if let Some(a) = m.get("any") {
                return vals
                    .iter()
                    .any(|x| a.as_array().unwrap().iter().any(|v| eq(x, v)));
            }
            if let Some(a) = m.get("except") {
                return !vals.is_empty()
                    && !vals
                        .iter()
                        .any(|x| a.as_array().unwrap().iter().any(|v| eq(x, v)));
            }
        }
        let rg = &c["range"];
        vals.iter().any(|x| {
            let Some(x) = x.as_f64() else { return false };
            rg.get("gt").is_none_or(|b| x > b.as_f64().unwrap())
                && rg.get("gte").is_none_or(|b| x >= b.as_f64().unwrap())
                && rg.get("lt").is_none_or(|b| x < b.as_f64().unwrap())
                && rg.get("lte").is_none_or(|b| x <= b.as_f64().unwrap())
        })
    };
    let list = |k: &str| {
        f.get(k)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    list("must").iter().all(cond)
        && (list("should").is_empty() || list("should").iter().any(cond))
        && !list("must_not").iter().any(cond)
}

#[test]
fn filters_select_exactly_what_qdrants_semantics_select() {
    let t = tempfile::tempdir().unwrap();
    let recs = records();
    let d = store(t.path(), &recs);
    let filters = [
        json!({"must": [{"key": "source", "match": {"value": "pubmed"}}]}),
        json!({"must": [{"key": "year", "range": {"gte": 2000, "lt": 2010}}]}),
        json!({"must": [{"key": "year", "match": {"value": 2001}}]}),
        json!({"must": [{"key": "year", "range": {"gt": 2000.5}}]}),
        json!({"must": [{"key": "open", "match": {"value": true}}]}),
        json!({"must": [{"key": "tags", "match": {"any": ["a", "d"]}}]}),
        json!({"must": [{"key": "tags", "match": {"value": "b"}}]}),
        json!({"must": [{"key": "source", "match": {"except": ["web", "arxiv"]}}]}),
        json!({"must_not": [{"key": "year", "range": {"lt": 2000}}]}),
        json!({"should": [{"key": "source", "match": {"value": "web"}}, {"key": "meta.score", "range": {"lte": 10}}]}),
        json!({"must": [{"key": "meta.score", "range": {"gt": 50, "lte": 75.5}}],
               "must_not": [{"must": [{"key": "open", "match": {"value": false}}, {"key": "source", "match": {"value": "web"}}]}]}),
        json!({"must": [{"should": [{"key": "year", "range": {"lt": 1995}}, {"key": "year", "range": {"gte": 2020}}]},
                        {"key": "tags", "match": {"any": ["c"]}}]}),
        json!({}),
    ];
    for f in &filters {
        let filter = Filter::from_json(f).unwrap();
        let got: Vec<u32> = if filter.is_empty() {
            (0..600).collect()
        } else {
            d.filter(&filter).unwrap().ids().collect()
        };
        let want: Vec<u32> = (0..600u32)
            .filter(|&i| eval(f, &recs[i as usize]))
            .collect();
        assert_eq!(got, want, "{f}");
        assert!(
            !want.is_empty() && want.len() < 600 || filter.is_empty(),
            "{f}: a weak case"
        );
    }
    // dates: a range with RFC 3339 bounds on the date field
    let f = Filter::from_json(&json!({"must": [{"key": "date", "range": {"gte": "2010-01-01T00:00:00Z", "lt": "2015-01-01T00:00:00Z"}}]})).unwrap();
    let got: Vec<u32> = d.filter(&f).unwrap().ids().collect();
    let want: Vec<u32> = (0..600u32)
        .filter(|&i| {
            let s = recs[i as usize]["date"].as_str().unwrap();
            ("2010".."2015").contains(&&s[..4])
        })
        .collect();
    assert_eq!(got, want);
}

#[test]
fn bad_filters_name_their_problem() {
    let t = tempfile::tempdir().unwrap();
    let d = store(t.path(), &records());
    let err = |f: &str| -> String {
        match f.parse::<Filter>().and_then(|f| d.filter(&f).map(|_| ())) {
            Ok(()) => panic!("{f} was accepted"),
            Err(e) => e.to_string(),
        }
    };
    assert!(
        err(r#"{"must": [{"key": "colour", "match": {"value": "red"}}]}"#)
            .contains("unknown field \"colour\"")
    );
    assert!(
        err(r#"{"must": [{"key": "year", "match": {"value": "red"}}]}"#)
            .contains("field \"year\" holds numbers")
    );
    assert!(err(r#"{"must": [{"key": "source", "range": {"gt": 3}}]}"#)
        .contains("range on field \"source\""));
    assert!(err(r#"{"must": [{"key": "year", "range": {}}]}"#).contains("range"));
    assert!(
        err(r#"{"must": [{"key": "year", "match": {"text": "x"}}]}"#).contains("\"match\" takes")
    );
    assert!(err(r#"{"must": [{"key": "year", "geo_radius": {}}]}"#)
        .contains("unsupported condition \"geo_radius\""));
    assert!(err(r#"{"filter": []}"#).contains("unknown clause \"filter\""));
    assert!(err(r#"{"must": {"key": "year"}}"#).contains("list of conditions"));
    assert!(err(r#"{"must": [{"key": "year""#).contains("not JSON"));
    assert!(err(r#"[1, 2]"#).contains("expected a JSON object"));
    assert!(
        err(r#"{"must": [{"key": "year", "range": {"gt": null}}]}"#).contains("at least one of gt")
    );
    assert!(err(
        r#"{"must": [{"key": "date", "range": {"gt": 0, "lt": "2024-01-01T00:00:00Z"}}]}"#
    )
    .contains("all numbers or all dates"));
    // long strings are for BM25, not filters
    let t2 = tempfile::tempdir().unwrap();
    let long = vec![obj(json!({"body": "y".repeat(300), "short": "z"}))];
    let d2 = store(t2.path(), &long);
    let f: Filter = r#"{"must": [{"key": "body", "match": {"value": "y"}}]}"#
        .parse()
        .unwrap();
    assert!(d2
        .filter(&f)
        .unwrap_err()
        .to_string()
        .contains("holds long texts"));
    let f: Filter = r#"{"must": [{"key": "short", "match": {"value": "z"}}]}"#
        .parse()
        .unwrap();
    assert_eq!(d2.filter(&f).unwrap().len(), 1);
}

#[test]
fn fields_round_trip_exactly_and_deletes_remove_documents() {
    let t = tempfile::tempdir().unwrap();
    let big = "x".repeat(1 << 20);
    let recs = vec![
        obj(json!({"title": "Ünïcödé ✓ 漢字 🙂", "text": "", "n": -0.5, "list": ["a", "", "ö"]})),
        obj(json!({})),
        obj(
            json!({"text": big, "nested": {"deep": {"er": [1, 2, 3]}}, "flag": false, "nothing": null}),
        ),
        obj(json!({"quote": "a \"quoted\"\nline\ttab \\ back"})),
    ];
    let d = store(t.path(), &recs);
    let got = d.get(&[0, 1, 2, 3, 600, 4], None).unwrap();
    for i in 0..4 {
        assert_eq!(got[i].as_ref().unwrap(), &recs[i], "record {i}");
        assert_eq!(
            serde_json::to_string(got[i].as_ref().unwrap()).unwrap(),
            serde_json::to_string(&recs[i]).unwrap()
        );
    }
    assert!(got[4].is_none() && got[5].is_none());
    let some = d
        .get(&[0], Some(&["title".to_string(), "missing".to_string()]))
        .unwrap();
    assert_eq!(
        some[0].as_ref().unwrap(),
        &obj(json!({"title": "Ünïcödé ✓ 漢字 🙂"}))
    );
    // reopened: the same
    drop(d);
    let mut d = Docs::open(t.path()).unwrap().unwrap();
    assert_eq!(d.get(&[2], None).unwrap()[0].as_ref().unwrap(), &recs[2]);
    d.delete(&[2], &[2]).unwrap();
    assert!(d.get(&[2], None).unwrap()[0].is_none());
    let f: Filter = r#"{"must": [{"key": "flag", "match": {"value": false}}]}"#
        .parse()
        .unwrap();
    assert!(d.filter(&f).unwrap().is_empty());
}

#[test]
fn a_store_ahead_of_its_index_is_repaired() {
    let t = tempfile::tempdir().unwrap();
    let recs = records();
    let mut d = store(t.path(), &recs[..300]);
    // as if an add of rows 300.. committed its documents and was killed before the index saved
    let rs: Vec<Record> = recs[300..].iter().cloned().map(Record::new).collect();
    d.add(300, &rs, &[]).unwrap();
    // ... and a delete of 5 saved by the index, killed before the documents were removed
    d.sync(300, &[5]).unwrap();
    assert_eq!(d.next_id(), 300);
    let f: Filter = r#"{"must": [{"key": "open", "match": {"any": [true, false]}}]}"#
        .parse()
        .unwrap();
    let rows: Vec<u32> = d.filter(&f).unwrap().ids().collect();
    assert_eq!(rows, (0..300).filter(|&r| r != 5).collect::<Vec<_>>());
    // repeating is a no-op; a store behind its index is refused
    d.sync(300, &[5]).unwrap();
    assert!(d.sync(400, &[5]).is_err());
    // and the next add continues at 300
    d.add(300, &rs[..10], &[5]).unwrap();
    assert_eq!(d.next_id(), 310);
}

#[test]
fn bm25_ranks_by_words_within_the_filter_and_hybrid_fuses() {
    let t = tempfile::tempdir().unwrap();
    let recs = records();
    let base = rewa::testutil::gaussian(600, 16, 1);
    let spec = IndexSpec {
        metric: Metric::Cosine,
        pipeline: "exact:10".parse().unwrap(),
        seed: 1,
    };
    let mut index = Index::build(&spec, base.view()).unwrap();
    let d = store(t.path(), &recs);
    let live = |_r: u32| true;
    // a huge k is cut to the documents held (no allocation of k slots)
    assert_eq!(
        d.bm25("document", usize::MAX / 4, None, &live)
            .unwrap()
            .len(),
        600
    );
    assert!(rewa_docs::check_records(&[obj(json!({"a.b": 1}))])
        .unwrap_err()
        .to_string()
        .contains("record 1"));
    let hits = d.bm25("document 123", 5, None, &live).unwrap();
    assert_eq!(hits[0].id, 123);
    assert!(hits.windows(2).all(|w| w[0] <= w[1]));
    let proteins = d.bm25("proteins", 1000, None, &live).unwrap();
    assert_eq!(proteins.len(), 200);
    assert!(proteins.iter().all(|h| h.id % 3 == 2));
    let f: Filter = r#"{"must": [{"key": "source", "match": {"value": "web"}}]}"#
        .parse()
        .unwrap();
    let allowed: RowFilter = d.filter(&f).unwrap();
    let fh = d.bm25("proteins", 1000, Some(&allowed), &live).unwrap();
    assert!(!fh.is_empty() && fh.iter().all(|h| allowed.contains(h.id) && h.id % 3 == 2));
    assert_eq!(
        fh.len(),
        (0..600u32)
            .filter(|&i| i % 3 == 2 && allowed.contains(i))
            .count()
    );

    // the library's search: dense and BM25 and hybrid, with the filter and a delete
    index.delete(&[allowed.ids().next().unwrap()]).unwrap();
    let q = rewa::Metric::Cosine
        .prepare(base.view().slice(10, 12))
        .unwrap();
    let texts = vec![
        "document 10 genes".to_string(),
        "document 11 cells".to_string(),
    ];
    for mode in [Mode::Dense, Mode::Bm25, Mode::Hybrid] {
        let got = rewa_docs::search(
            &index,
            Some(&d),
            &Query {
                k: 10,
                mode,
                filter: Some(&f),
                vectors: Some(&q),
                texts: Some(&texts),
                ..Default::default()
            },
        )
        .unwrap();
        for h in &got {
            assert_eq!(h.len(), 10, "{mode}");
            assert!(h
                .iter()
                .all(|x| allowed.contains(x.id) && !index.deleted().contains(&x.id)));
        }
        let unfiltered = rewa_docs::search(
            &index,
            Some(&d),
            &Query {
                k: 10,
                mode,
                vectors: Some(&q),
                texts: Some(&texts),
                ..Default::default()
            },
        )
        .unwrap();
        // query 0 is row 10's own vector and names document 10: first in every mode
        assert_eq!(unfiltered[0][0].id, 10, "{mode}");
        assert_eq!(unfiltered[1][0].id, 11, "{mode}");
    }
    // reciprocal rank fusion: by summed 1 / (60 + rank)
    let a = [
        rewa::Hit {
            id: 1,
            distance: 0.0,
        },
        rewa::Hit {
            id: 2,
            distance: 0.1,
        },
    ];
    let b = [
        rewa::Hit {
            id: 2,
            distance: -5.0,
        },
        rewa::Hit {
            id: 3,
            distance: -4.0,
        },
    ];
    let fused = rewa_docs::rrf(&[&a, &b], 60.0, 3);
    assert_eq!(fused.iter().map(|h| h.id).collect::<Vec<_>>(), [2, 1, 3]);
    assert!((fused[0].distance + (1.0 / 62.0 + 1.0 / 61.0)).abs() < 1e-6);
    // the weighted sum of min-max normalised scores: 1 and 2 tie at 0.5 (by row), 3 scores 0
    let fused = rewa_docs::weighted(&[(&a, 0.5), (&b, 0.5)], 3);
    assert_eq!(fused.iter().map(|h| h.id).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(
        fused.iter().map(|h| -h.distance).collect::<Vec<_>>(),
        [0.5, 0.5, 0.0]
    );
    let fused = rewa_docs::weighted(&[(&a, 0.2), (&b, 0.8)], 3);
    assert_eq!(fused.iter().map(|h| h.id).collect::<Vec<_>>(), [2, 1, 3]);
    for (s, ok) in [
        ("weighted", true),
        ("weighted:0.3", true),
        ("rrf:1", true),
        ("rrf", true),
        ("weighted:2", false),
        ("rrf:0", false),
        ("sum", false),
    ] {
        assert_eq!(s.parse::<rewa_docs::Fusion>().is_ok(), ok, "{s}");
    }
}
