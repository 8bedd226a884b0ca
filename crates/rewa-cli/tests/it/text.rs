// Text-aware indexes: `rewa build --text --model`, `rewa search --text/--text-file`,
// `rewa add --text`, `rewa eval --text --query-text`. Input checks run before the model loads
// (no model needed); the rest runs MiniLM on a few SciFact texts when the model is at hand.

use crate::common::{fails, json, ok, ok_args, rewa};
use crate::embed::minilm;
use std::path::{Path, PathBuf};

fn scifact() -> PathBuf {
    let root = std::env::var_os("REWA_DATA").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data"),
        PathBuf::from,
    );
    root.join("scifact")
}

/// The first `n` lines of `src` into `dst`.
fn head(src: &Path, n: usize, dst: &Path) {
    let text = std::fs::read_to_string(src).unwrap();
    let lines: Vec<&str> = text.lines().take(n).collect();
    std::fs::write(dst, lines.join("\n") + "\n").unwrap();
}

/// Lines of `rewa search`'s TSV after the header, split into fields.
fn rows(tsv: &str) -> Vec<Vec<String>> {
    tsv.lines()
        .skip(1)
        .map(|l| l.split('\t').map(str::to_owned).collect())
        .collect()
}

#[test]
fn text_inputs_are_checked_before_the_model_loads() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    std::fs::write(
        d.join("c.jsonl"),
        "{\"_id\": \"a\", \"text\": \"x\"}\n{\"_id\": \"b\"}\n",
    )
    .unwrap();
    std::fs::write(
        d.join("dup.jsonl"),
        "{\"_id\": \"a\", \"text\": \"x\"}\n{\"_id\": \"a\", \"text\": \"y\"}\n",
    )
    .unwrap();
    fails(
        "build --text c.jsonl --model no-model --out idx",
        d,
        "c.jsonl line 2: no field \"text\"",
    );
    fails(
        "build --text dup.jsonl --model no-model --out idx",
        d,
        "id \"a\" names two texts",
    );
    fails(
        "eval --text dup.jsonl --query-text c.jsonl --model no-model --pipeline exact:10",
        d,
        "names two texts",
    );
    // clap: text needs a model; vectors and texts do not mix
    fails("build --text c.jsonl --out idx", d, "--model");
    fails(
        "build --text c.jsonl --base v.npy --model m --out idx",
        d,
        "cannot be used with",
    );
    assert!(!d.join("idx/manifest.json").exists());
}

#[test]
fn an_index_built_from_text_searches_by_text_and_prints_corpus_ids() {
    let Some(model) = minilm() else { return };
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let sf = scifact();
    head(&sf.join("corpus.jsonl"), 30, &d.join("c.jsonl"));
    head(&sf.join("queries.jsonl"), 6, &d.join("q.jsonl"));
    let m = model.display();
    let j = json(
        &format!(
            "build --text c.jsonl --model {m} --pipeline hadamard256+sign:20,exact:10 --out idx"
        ),
        d,
    );
    assert_eq!(j["count"], 30, "{j}");
    let info = json("info --index idx", d);
    assert_eq!(info["has_doc_ids"], true, "{info}");
    assert_eq!(info["format_version"], 3, "{info}");
    assert_eq!(info["text_model"]["dir"], m.to_string(), "{info}");
    assert_eq!(info["text_model"]["max_seq_len"], 256, "{info}");
    let sha = info["text_model"]["weights_sha256"].as_str().unwrap();
    assert!(
        sha.len() == 64 && sha.chars().all(|c| c.is_ascii_hexdigit()),
        "{sha}"
    );
    // The text model shows without --json too.
    let (ok_, out, err) = rewa("info --index idx", d);
    assert!(ok_, "{err}");
    assert!(
        out.contains(&format!(
            "text model      {m} (weights sha256 {}...",
            &sha[..16]
        )),
        "{out}"
    );

    // The same texts embedded by `rewa embed` and searched as vectors give the same hits.
    ok(
        &format!("embed --model {m} --input q.jsonl --out q.npy --ids-out qids.txt"),
        d,
    );
    let by_vec = rows(&ok("search --index idx --queries q.npy --k 5", d));
    let by_text = rows(&ok("search --index idx --text-file q.jsonl --k 5", d));
    assert_eq!(by_vec.len(), 6 * 5);
    let corpus_ids: Vec<String> = std::fs::read_to_string(d.join("c.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["_id"]
                .to_string()
                .trim_matches('"')
                .to_owned()
        })
        .collect();
    let qids: Vec<String> = std::fs::read_to_string(d.join("qids.txt"))
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    for (v, t) in by_vec.iter().zip(&by_text) {
        // query column: row number for vectors, the query's id for --text-file
        assert_eq!(qids[v[0].parse::<usize>().unwrap()], t[0]);
        assert_eq!(v[1..3], t[1..3], "rank and corpus id");
        assert!(corpus_ids.contains(&t[2]), "{t:?} names no corpus id");
        let (a, b): (f32, f32) = (v[3].parse().unwrap(), t[3].parse().unwrap());
        assert!((a - b).abs() < 1e-5, "{v:?} {t:?}");
    }
    // --text: one query as text equals the first query of the file.
    let first: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(d.join("q.jsonl"))
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    let q0 = first["text"].as_str().unwrap().to_owned();
    let one = rows(&ok_args(
        &["search", "--index", "idx", "--k", "5", "--text", &q0],
        d,
    ));
    assert_eq!(one.len(), 5);
    for (o, t) in one.iter().zip(&by_text) {
        assert_eq!((o[0].as_str(), &o[1..3]), ("0", &t[1..3]));
    }

    // A model whose weights differ by one byte is refused; so is adding bare vectors.
    crate::embed::model_with_other_weights(&model, &d.join("other-model"));
    fails(
        "search --index idx --text-file q.jsonl --model other-model",
        d,
        "is not the one the index was built with",
    );
    fails(
        "add --index idx --base q.npy",
        d,
        "names its rows by corpus ids",
    );

    // add --text: ids continue and print; a repeated id is refused and nothing changes.
    let more = d.join("more.jsonl");
    let text = std::fs::read_to_string(sf.join("corpus.jsonl")).unwrap();
    let extra: Vec<&str> = text.lines().skip(30).take(4).collect();
    std::fs::write(&more, extra.join("\n") + "\n").unwrap();
    let j = json("add --index idx --text more.jsonl", d);
    assert_eq!(
        (j["count"].as_u64(), j["added"].as_u64()),
        (Some(34), Some(4))
    );
    fails(
        "add --index idx --text more.jsonl",
        d,
        "already names a row of idx",
    );
    assert_eq!(json("info --index idx", d)["count"], 34);
    // Each added document finds itself first, by its corpus id.
    let hits = rows(&ok("search --index idx --text-file more.jsonl --k 1", d));
    for (h, line) in hits.iter().zip(&extra) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let id = v["_id"].to_string();
        assert_eq!(h[0], id.trim_matches('"'));
        assert_eq!(h[2], id.trim_matches('"'), "{h:?}");
    }
}

#[test]
fn eval_from_text_equals_eval_from_the_embedded_vectors() {
    let Some(model) = minilm() else { return };
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let sf = scifact();
    head(&sf.join("corpus.jsonl"), 40, &d.join("c.jsonl"));
    head(&sf.join("queries.jsonl"), 8, &d.join("q.jsonl"));
    let m = model.display();
    ok(
        &format!("embed --model {m} --input c.jsonl --out c.npy --ids-out cids.txt"),
        d,
    );
    ok(
        &format!("embed --model {m} --input q.jsonl --out q.npy --ids-out qids.txt"),
        d,
    );
    // Judgements: query i finds document 3i relevant (any fixed pairing serves: both paths
    // must score it the same).
    let cids: Vec<String> = std::fs::read_to_string(d.join("cids.txt"))
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let qids: Vec<String> = std::fs::read_to_string(d.join("qids.txt"))
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let mut qrels = String::from("query-id\tcorpus-id\tscore\n");
    for (i, q) in qids.iter().enumerate() {
        qrels += &format!("{q}\t{}\t1\n", cids[3 * i]);
    }
    std::fs::write(d.join("qrels.tsv"), qrels).unwrap();
    let p = "--pipeline hadamard256+sign:20,exact:10 --qrels qrels.tsv";
    let from_vec = json(
        &format!("eval --base c.npy --queries q.npy --doc-ids cids.txt --query-ids qids.txt {p}"),
        d,
    );
    let from_text = json(
        &format!("eval --text c.jsonl --query-text q.jsonl --model {m} {p}"),
        d,
    );
    for key in ["ndcg_at_10", "recall_at_100", "recall_at_k"] {
        let (a, b) = (from_vec[key].as_f64(), from_text[key].as_f64());
        assert!(a.is_some(), "{key} missing: {from_vec}");
        assert!(
            (a.unwrap() - b.unwrap()).abs() < 1e-9,
            "{key}: {from_vec} vs {from_text}"
        );
    }
    fails(
        &format!("eval --text c.jsonl --query-text q.jsonl --model {m} --pipeline exact:10 --doc-ids cids.txt --qrels qrels.tsv"),
        d,
        "cannot be used with",
    );
}

/// `add --text` with an id the index already holds is refused before the model loads (it was
/// reported after the whole file was embedded): here the model is gone, so any later check
/// would fail on loading it instead. A deleted id may be used again; an index built from
/// vectors takes no texts.
#[test]
fn add_text_refuses_a_held_id_before_embedding() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let m = crate::embed::tiny_model(&d.join("m"));
    std::fs::write(
        d.join("c.jsonl"),
        "{\"_id\": \"a\", \"text\": \"the cat sat\"}\n{\"_id\": \"b\", \"text\": \"a big dog\"}\n{\"_id\": \"c\", \"text\": \"the red fox\"}\n",
    )
    .unwrap();
    std::fs::write(
        d.join("more.jsonl"),
        "{\"_id\": \"x\", \"text\": \"hello world\"}\n{\"_id\": \"b\", \"text\": \"a small dog\"}\n",
    )
    .unwrap();
    let j = json(
        &format!(
            "build --text c.jsonl --model {} --pipeline exact:3 --out idx",
            m.display()
        ),
        d,
    );
    assert_eq!(j["count"], 3, "{j}");
    std::fs::rename(&m, d.join("moved")).unwrap();
    fails(
        "add --index idx --text more.jsonl",
        d,
        "more.jsonl: text 2 has id \"b\", which already names a row of idx",
    );
    // once "b" is deleted, the same check passes and the missing model is what fails
    std::fs::write(d.join("del.txt"), "b\n").unwrap();
    ok("delete --index idx --doc-ids del.txt", d);
    fails("add --index idx --text more.jsonl", d, "loading the model");
    std::fs::rename(d.join("moved"), &m).unwrap();
    let j = json("add --index idx --text more.jsonl", d);
    assert_eq!(
        (j["count"].as_u64(), j["added"].as_u64()),
        (Some(4), Some(2))
    );

    let v: Vec<u8> = rewa::io::npy_header_f32(2, 16)
        .into_iter()
        .chain((0..32).flat_map(|i| (i as f32).to_le_bytes()))
        .collect();
    std::fs::write(d.join("v.npy"), v).unwrap();
    ok("build --base v.npy --pipeline exact:2 --out vidx", d);
    fails(
        "add --index vidx --text more.jsonl",
        d,
        "have no corpus ids (it was built from vectors)",
    );
}

/// `--precision int8`: `rewa embed` says so in its summary, an index built in int8 records it
/// (info shows it), its text queries are embedded in int8 (hits equal those of the int8
/// vectors `rewa embed` writes), and asking for f32 against it is refused.
#[test]
fn an_int8_index_embeds_its_queries_in_int8() {
    let Some(model) = minilm() else { return };
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let sf = scifact();
    head(&sf.join("corpus.jsonl"), 30, &d.join("c.jsonl"));
    head(&sf.join("queries.jsonl"), 6, &d.join("q.jsonl"));
    let m = model.display();
    let j = json(
        &format!("embed --model {m} --input q.jsonl --out q8.npy --precision int8"),
        d,
    );
    assert_eq!(j["precision"], "int8", "{j}");
    let j = json(&format!("embed --model {m} --input q.jsonl --out q.npy"), d);
    assert_eq!(j["precision"], "f32", "{j}");
    fails(
        &format!("embed --model {m} --input q.jsonl --out x.npy --precision int4"),
        d,
        "expected f32 or int8",
    );
    ok(
        &format!("build --text c.jsonl --model {m} --precision int8 --pipeline exact:10 --out idx"),
        d,
    );
    let info = json("info --index idx", d);
    assert_eq!(info["text_model"]["precision"], "int8", "{info}");
    let (ok_, out, err) = rewa("info --index idx", d);
    assert!(
        ok_ && out.contains("word pieces per text, int8)"),
        "{out}{err}"
    );
    let by_vec = ok("search --index idx --queries q8.npy --k 5", d);
    let by_text = ok("search --index idx --text-file q.jsonl --k 5", d);
    let strip = |tsv: &str| -> Vec<Vec<String>> {
        rows(tsv).into_iter().map(|r| r[1..].to_vec()).collect()
    };
    assert_eq!(strip(&by_vec), strip(&by_text), "queries embedded in int8");
    assert_ne!(
        strip(&ok("search --index idx --queries q.npy --k 5", d)),
        strip(&by_text),
        "f32 queries score differently"
    );
    fails(
        "search --index idx --text-file q.jsonl --precision f32",
        d,
        "embedded in int8",
    );
    // an f32 index records nothing new: no precision field is written
    ok(
        &format!("build --text c.jsonl --model {m} --pipeline exact:10 --out idx32"),
        d,
    );
    let info = json("info --index idx32", d);
    assert!(info["text_model"]["precision"].is_null(), "{info}");
    fails(
        "search --index idx32 --text-file q.jsonl --precision int8",
        d,
        "embedded in f32",
    );
}
