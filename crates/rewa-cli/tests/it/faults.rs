// Regression tests for faults found when rewa was tried as a new and as a hostile user would.
// Each failed before its fix.

use crate::common::{fails, json, ok, rewa};
use std::path::Path;

/// A small index `idx` over `s/base.npy` (20 classes x 10, dim 16) in `d`.
fn small_index(d: &Path) {
    ok(
        "synth --classes 20 --per-class 10 --dim 16 --new-classes 0 --out s",
        d,
    );
    ok(
        "build --base s/base.npy --pipeline hadamard32+sign:50,exact:10 --out idx",
        d,
    );
}

#[test]
fn build_never_deletes_files_it_did_not_write() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    ok(
        "synth --classes 5 --per-class 10 --dim 8 --new-classes 0 --out s",
        d,
    );
    std::fs::create_dir(d.join("notes")).unwrap();
    for f in ["codes-notes.txt", "vectors-draft.md", "params-old.json"] {
        std::fs::write(d.join("notes").join(f), "mine").unwrap();
    }
    // a folder of other files is refused, and left as it was
    fails(
        "build --base s/base.npy --pipeline hadamard16+sign:20,exact:10 --out notes",
        d,
        "is not empty and holds no index",
    );
    assert!(!d.join("notes/manifest.json").exists());
    // --force builds there, and twice over, but the user's files stay
    for _ in 0..2 {
        ok(
            "build --base s/base.npy --pipeline hadamard16+sign:20,exact:10 --out notes --force",
            d,
        );
        for f in ["codes-notes.txt", "vectors-draft.md", "params-old.json"] {
            assert_eq!(
                std::fs::read_to_string(d.join("notes").join(f)).unwrap(),
                "mine"
            );
        }
    }
    // an index is never replaced silently: rebuilding over one needs --force (which keeps
    // foreign files too)
    ok("build --base s/base.npy --pipeline exact:10 --out idx", d);
    std::fs::write(d.join("idx/codes-mine.bin"), "mine").unwrap();
    let manifest = std::fs::read(d.join("idx/manifest.json")).unwrap();
    fails(
        "build --base s/base.npy --pipeline hadamard16+sign:20,exact:10 --out idx",
        d,
        "idx already holds an index of 50 vectors; choose another folder, or pass --force to replace it",
    );
    assert_eq!(
        std::fs::read(d.join("idx/manifest.json")).unwrap(),
        manifest
    );
    ok(
        "build --base s/base.npy --pipeline hadamard16+sign:20,exact:10 --out idx --force",
        d,
    );
    ok("add --index idx --base s/base.npy", d);
    assert_eq!(
        std::fs::read_to_string(d.join("idx/codes-mine.bin")).unwrap(),
        "mine"
    );
    assert_eq!(json("info --index idx", d)["count"], 100);
}

#[test]
fn tune_refuses_bad_settings_and_keeps_to_its_time_budget() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    small_index(d);
    let q = "tune --index idx --queries s/queries_same.npy";
    fails(
        &format!("{q} --k 201"),
        d,
        "the index holds only 200 vectors",
    );
    fails(&format!("{q} --k 0"), d, "k must be at least 1");
    for bad in ["1.5", "NaN", "inf", "0"] {
        fails(
            &format!("{q} --target-recall {bad}"),
            d,
            "target recall must be in (0, 1]",
        );
    }
    fails(&format!("{q} --max-keep 5"), d, "must be at least k = 10");
    fails(
        &format!("{q} --max-seconds 0"),
        d,
        "positive number of seconds",
    );
    // k = n is allowed (was a panic in clamp for k > n)
    let j = json(&format!("{q} --k 200 --target-recall 0.5"), d);
    assert_eq!(j["target_met"], true, "{j}");
    // A spent budget returns the best setting so far and says so.
    let j = json(&format!("{q} --max-seconds 0.000001 --target-recall 1"), d);
    assert_eq!(j["timed_out"], true, "{j}");
    assert_eq!(j["curve"].as_array().unwrap().len(), 1, "{j}");
    assert_eq!(json("info --index idx", d)["pipeline"], j["pipeline"]);
    let j = json(&format!("{q} --target-recall 0.9"), d);
    assert_eq!(j["timed_out"], false, "{j}");
}

/// Writes one id per line.
fn ids(path: &Path, ids: impl Iterator<Item = String>) {
    std::fs::write(path, ids.collect::<Vec<_>>().join("\n") + "\n").unwrap();
}

#[test]
fn eval_searches_as_deep_as_its_measures_need() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    ok(
        "synth --classes 30 --per-class 11 --dim 32 --noise 0.05 --new-classes 0 --out s",
        d,
    );
    let base = rewa::io::read_vectors(&d.join("s/base.npy")).unwrap();
    let queries = rewa::io::read_vectors(&d.join("s/queries_same.npy")).unwrap();
    // Qrels whose relevant documents are each query's exact neighbours at ranks 11..=20:
    // recall@100 is 1 and nDCG@10 is 0 for exact search (it was 0 and 0 when the search
    // stopped at 10 hits).
    let m = rewa::Metric::Cosine;
    let (bp, qp) = (
        m.prepare(base.view()).unwrap(),
        m.prepare(queries.view()).unwrap(),
    );
    let truth = rewa::eval::ground_truth(&bp, &qp, 20);
    ids(
        &d.join("docs.txt"),
        (0..base.len()).map(|i| format!("d{i}")),
    );
    ids(
        &d.join("queries.txt"),
        (0..queries.len()).map(|i| format!("q{i}")),
    );
    let mut qrels = String::from("query-id\tcorpus-id\tscore\n");
    for (q, hits) in truth.iter().enumerate() {
        for h in &hits[10..20] {
            qrels += &format!("q{q}\td{}\t1\n", h.id);
        }
    }
    std::fs::write(d.join("qrels.tsv"), qrels).unwrap();
    let qr = "--qrels qrels.tsv --doc-ids docs.txt --query-ids queries.txt";
    for what in [
        "--pipeline exact:10",
        "--encoder flat",
        "--pipeline hadamard64+sign:300,exact:10",
    ] {
        let j = json(
            &format!("eval --base s/base.npy --queries s/queries_same.npy {what} {qr}"),
            d,
        );
        assert_eq!(j["recall_at_100"], 1.0, "{what}: {j}");
        assert_eq!(j["ndcg_at_10"], 0.0, "{what}: {j}");
        assert_eq!(j["recall_at_k"], 1.0, "{what}: {j}");
    }
    // A first stage that keeps fewer than 100: recall@k and QPS are the pipeline's own, and
    // recall@100 comes from a named deepened pipeline.
    let plain = json(
        "eval --base s/base.npy --queries s/queries_same.npy --pipeline hadamard64+sign:50,exact:10",
        d,
    );
    let j = json(
        &format!(
            "eval --base s/base.npy --queries s/queries_same.npy --pipeline hadamard64+sign:50,exact:10 {qr}"
        ),
        d,
    );
    assert_eq!(j["deep_pipeline"], "hadamard64+sign:100,exact:100", "{j}");
    assert_eq!(j["recall_at_k"], plain["recall_at_k"], "{j}");
    assert!(plain.get("deep_pipeline").is_none(), "{plain}");
    // Queries that are the base: the query's own row is skipped, so label precision@10 looks
    // at the 10 others of its class (11 per class, tight clusters): 1.0, not 0.9.
    for what in ["--encoder flat", "--pipeline hadamard64+sign:300,exact:10"] {
        let j = json(
            &format!(
                "eval --base s/base.npy --queries s/base.npy {what} --labels s/labels.npy --query-labels s/labels.npy"
            ),
            d,
        );
        assert_eq!(j["label_precision_at_k"], 1.0, "{what}: {j}");
    }
    // Id lists that do not match the rows, or repeat an id, are refused.
    ids(
        &d.join("short.txt"),
        (0..base.len() - 1).map(|i| format!("d{i}")),
    );
    fails(
        "eval --base s/base.npy --queries s/queries_same.npy --encoder flat --qrels qrels.tsv --doc-ids short.txt --query-ids queries.txt",
        d,
        &format!(
            "holds {} ids, but the base holds {} vectors",
            base.len() - 1,
            base.len()
        ),
    );
    ids(
        &d.join("dup.txt"),
        (0..base.len()).map(|i| format!("d{}", i.min(5))),
    );
    fails(
        "eval --base s/base.npy --queries s/queries_same.npy --encoder flat --qrels qrels.tsv --doc-ids dup.txt --query-ids queries.txt",
        d,
        "id \"d5\" on line 7 repeats line 6",
    );
}

#[test]
fn hostile_index_files_and_sizes_get_errors_not_hangs() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    small_index(d);
    let search = "search --index bad --queries s/queries_same.npy --json";
    let fresh = || {
        let _ = std::fs::remove_dir_all(d.join("bad"));
        std::fs::create_dir(d.join("bad")).unwrap();
        for e in std::fs::read_dir(d.join("idx")).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), d.join("bad").join(e.file_name())).unwrap();
        }
    };
    let m = d.join("bad/manifest.json");
    // a FIFO as the manifest: would block a read forever
    fresh();
    std::fs::remove_file(&m).unwrap();
    assert!(std::process::Command::new("mkfifo")
        .arg(&m)
        .status()
        .unwrap()
        .success());
    fails(search, d, "not a regular file");
    // a link to /dev/zero: would read until memory runs out
    fresh();
    std::fs::remove_file(&m).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &m).unwrap();
    fails(search, d, "not a regular file");
    // a 100 GB sparse file
    fresh();
    std::fs::File::create(&m)
        .unwrap()
        .set_len(100 << 30)
        .unwrap();
    fails(search, d, "more than the");
    // the same for vector files and a model's config: a FIFO, a link to /dev/zero
    assert!(std::process::Command::new("mkfifo")
        .arg(d.join("fifo.npy"))
        .status()
        .unwrap()
        .success());
    fails(
        "eval --base fifo.npy --queries s/queries_same.npy --encoder flat",
        d,
        "not a regular file",
    );
    std::os::unix::fs::symlink("/dev/zero", d.join("zero.fvecs")).unwrap();
    fails(
        "eval --base zero.fvecs --queries s/queries_same.npy --encoder flat",
        d,
        "not a regular file",
    );
    std::fs::create_dir(d.join("model")).unwrap();
    assert!(std::process::Command::new("mkfifo")
        .arg(d.join("model/config.json"))
        .status()
        .unwrap()
        .success());
    fails(
        "eval --base s/base.npy --queries s/queries_same.npy --encoder learned=model+sign",
        d,
        "not a regular file",
    );
    // a huge k does not allocate for it: the .npy holds min(k, n) columns
    let j = json(
        "search --index idx --queries s/queries_same.npy --k 1000000000 --pipeline hadamard32+sign:1000000000,exact:1000000000 --out hits.npy",
        d,
    );
    assert_eq!(j["k"], 1_000_000_000u64);
    let a = rewa::io::read_npy(&d.join("hits.npy")).unwrap();
    assert_eq!(a.shape, vec![200, 200]);
}

#[test]
fn messages_name_the_problem_once() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    small_index(d);
    let err = fails(
        "search --index nowhere --queries s/queries_same.npy",
        d,
        "No such file or directory",
    );
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
    fails(
        "bench --only bogus --quick",
        d,
        "unknown data set \"bogus\"",
    );
    // a mistyped index path is an error, and no folder appears there
    fails("add --index typo --base s/base.npy", d, "no index here");
    fails("tune --index typo --queries s/base.npy", d, "no index here");
    assert!(!d.join("typo").exists());
    fails("bench --only synth --extra nonsense:5", d, "unknown token");
}

#[test]
fn bench_quick_runs_every_row_and_records_skipped_sets() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    // no data folder at the default place: the real sets are skipped, and the JSON says so
    let (ok_, out, err) = rewa("bench --quick --out b.json", d);
    assert!(ok_, "{err}");
    assert!(out.contains("### synth-new"), "{out}");
    // A legend under the first table, and each table's one-line conclusion.
    assert_eq!(out.matches("Legend: *scanned B/vec*").count(), 1, "{out}");
    assert_eq!(
        out.matches("In short: at 8x smaller than float32 or more, `")
            .count(),
        2,
        "{out}"
    );
    let j: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("b.json")).unwrap()).unwrap();
    let skipped: Vec<&str> = j["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(skipped, ["scifact", "sift"]);
    let sets = j["sets"].as_array().unwrap();
    assert_eq!(sets.len(), 2);
    for s in sets {
        let rows = s["rows"].as_array().unwrap();
        assert_eq!(rows.len(), 14, "{s}"); // 13 rows and the seed's learned row
        let row = |spec: &str| rows.iter().find(|r| r["spec"] == spec).unwrap();
        // exact rows are exact; the sign code at 2 bytes is far from it
        assert_eq!(row("flat")["recall_at_k"], 1.0);
        assert!(row("hadamard16+sign")["recall_at_k"].as_f64().unwrap() < 0.5);
    }
    // the seed's table: the learned encoder's recall on its own training vectors stands beside
    // its held-out recall, and sits above it (the quick run's model memorises: 0.64 vs 0.53)
    assert!(
        out.contains("### seed: recall@10 on the training vectors"),
        "{out}"
    );
    let seed = j["seed"].as_array().unwrap();
    assert_eq!(seed.len(), 4);
    let learned = &seed[0];
    assert!(learned["spec"].as_str().unwrap().starts_with("learned="));
    let (tr, held) = (
        learned["train_recall"].as_f64().unwrap(),
        learned["held_out_same_classes"].as_f64().unwrap(),
    );
    assert!(tr > held && held > 0.2, "train {tr} vs held-out {held}");
    assert!(d.join("b-learned/model.safetensors").exists());
    assert_eq!(seed[3]["train_recall"], 1.0, "flat finds every neighbour");
    // a second run replaces the model it wrote; a folder of the user's under that name is refused
    let (ok_, _, err) = rewa("bench --quick --only synth --data nowhere --out b.json", d);
    assert!(ok_, "{err}");
    std::fs::create_dir_all(d.join("mine-learned")).unwrap();
    std::fs::write(d.join("mine-learned/notes.txt"), b"keep me").unwrap();
    fails(
        "bench --quick --only synth --data nowhere --out mine.json",
        d,
        "is not a model an earlier `rewa bench` wrote",
    );
    assert_eq!(
        std::fs::read(d.join("mine-learned/notes.txt")).unwrap(),
        b"keep me"
    );
    assert!(!d.join("mine-learned/model.safetensors").exists());
    // a data folder that is present but broken is an error, not a skip
    std::fs::create_dir_all(d.join("data/siftsmall")).unwrap();
    std::fs::write(d.join("data/siftsmall/siftsmall_base.fvecs"), b"junk").unwrap();
    fails(
        "bench --quick --only sift --data data",
        d,
        "siftsmall_base.fvecs",
    );
}

/// A 1-D `.npy` of u64 values, written by hand (numpy's layout).
fn npy_u64(path: &Path, v: &[u64]) {
    let mut h = format!(
        "{{'descr': '<u8', 'fortran_order': False, 'shape': ({},), }}",
        v.len()
    );
    while (10 + h.len() + 1) % 64 != 0 {
        h.push(' ');
    }
    h.push('\n');
    let mut b = b"\x93NUMPY\x01\x00".to_vec();
    b.extend((h.len() as u16).to_le_bytes());
    b.extend(h.as_bytes());
    for x in v {
        b.extend(x.to_le_bytes());
    }
    std::fs::write(path, b).unwrap();
}

/// Ids past u32 were skipped as if negative ("deleted 0 of 0"); an id listed twice was
/// counted as already deleted.
#[test]
fn delete_refuses_ids_past_u32_and_counts_a_repeated_id_once() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    small_index(d);
    let manifest = std::fs::read(d.join("idx/manifest.json")).unwrap();
    for v in [(1u64 << 32) + 5, 1 << 40, (1 << 63) + 7, u64::MAX - 1] {
        npy_u64(&d.join("big.npy"), &[3, v]);
        let shown = i64::try_from(v).unwrap_or(i64::MAX);
        fails(
            "delete --index idx --ids big.npy",
            d,
            &format!(
                "big.npy entry 1: {shown} is not an id (ids are whole numbers from 0 to 4294967295)"
            ),
        );
    }
    std::fs::write(d.join("big.txt"), "3\n4294967296\n").unwrap();
    fails(
        "delete --index idx --ids big.txt",
        d,
        "big.txt line 2: 4294967296 is not an id (ids are whole numbers from 0 to 4294967295)",
    );
    std::fs::write(d.join("neg.txt"), "3\n-2\n").unwrap();
    fails(
        "delete --index idx --ids neg.txt",
        d,
        "line 2: -2 is not an id",
    );
    assert_eq!(
        std::fs::read(d.join("idx/manifest.json")).unwrap(),
        manifest
    );
    // -1, the padding of `search --out x.npy`, is skipped
    rewa::io::write_npy_i64(&d.join("pad.npy"), &[2], &[7, -1]).unwrap();
    let j = json("delete --index idx --ids pad.npy", d);
    assert_eq!(
        (j["deleted"].as_u64(), j["asked"].as_u64()),
        (Some(1), Some(1)),
        "{j}"
    );
    // a repeated id is one id, not an "already deleted" one
    std::fs::write(d.join("dup.txt"), "3\n3\n4\n7\n").unwrap();
    let (ok_, out, err) = rewa("delete --index idx --ids dup.txt --json", d);
    assert!(ok_, "{err}");
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (
            j["deleted"].as_u64(),
            j["asked"].as_u64(),
            j["repeated"].as_u64(),
            j["count"].as_u64()
        ),
        (Some(2), Some(3), Some(1), Some(197)),
        "{j}"
    );
    assert!(
        err.contains("deleted 2 of 3 ids (1 already deleted; 1 listed more than once)"),
        "{err}"
    );
}

/// `bench --data` onto a missing folder exited 0 with no rows, and an unwritable --out failed
/// only after every row ran.
#[test]
fn bench_refuses_a_missing_data_folder_and_an_unwritable_out_before_any_row() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    fails(
        "bench --quick --only scifact,sift --data nowhere",
        d,
        "--data nowhere: no such directory",
    );
    // the default folder absent and only real sets asked: nothing to run is an error
    fails(
        "bench --quick --only sift --out b.json",
        d,
        "no data set to run (sift: ../shared/data/siftsmall is absent)",
    );
    // --out is checked before any row runs (a row prints its table on stdout)
    for (out, needle) in [
        ("nodir/b.json", "--out nodir/b.json: cannot write in nodir"),
        (".", "--out . is a directory"),
    ] {
        let (ok_, stdout, err) = rewa(
            &format!("bench --quick --only synth --no-learned --out {out}"),
            d,
        );
        assert!(!ok_ && err.contains(needle), "{err}");
        assert!(stdout.is_empty(), "rows ran: {stdout}");
    }
    assert!(!d.join("b.json").exists() && !d.join("nodir").exists());
    let probes: Vec<_> = std::fs::read_dir(d)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains("probe")
        })
        .collect();
    assert!(probes.is_empty());
}

/// `tune` needed float vectors: `ivf128/8+flat:10` (whose codes are the vectors) could not be
/// tuned, nor any index without floats. Flat codes now give ground truth, and --base does
/// for the rest.
#[test]
fn tune_works_on_flat_codes_and_with_base_on_any_index() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    ok(
        "synth --classes 50 --per-class 60 --dim 16 --new-classes 0 --out s",
        d,
    );
    ok(
        "build --base s/base.npy --pipeline ivf128/1+flat:10 --metric l2 --out ivf",
        d,
    );
    let j = json(
        "tune --index ivf --queries s/queries_same.npy --target-recall 0.9",
        d,
    );
    assert_eq!(j["target_met"], true, "{j}");
    let p = j["pipeline"].as_str().unwrap();
    assert!(p.starts_with("ivf128/") && p.ends_with("+flat:10"), "{p}");
    assert_eq!(json("info --index ivf", d)["pipeline"], p);
    // neither float vectors nor flat codes: --base is needed, and says so
    ok(
        "build --base s/base.npy --pipeline ivf16/1+hadamard16+int8:10 --out codes",
        d,
    );
    let manifest = std::fs::read(d.join("codes/manifest.json")).unwrap();
    fails(
        "tune --index codes --queries s/queries_same.npy",
        d,
        "stores neither float vectors nor flat codes: give the vectors it was built from (--base FILE",
    );
    assert_eq!(
        std::fs::read(d.join("codes/manifest.json")).unwrap(),
        manifest
    );
    fails(
        "tune --index codes --queries s/queries_same.npy --base s/queries_same.npy",
        d,
        "the base holds",
    );
    let j = json(
        "tune --index codes --queries s/queries_same.npy --base s/base.npy --target-recall 0.8 --confidence 0",
        d,
    );
    assert_eq!(j["target_met"], true, "{j}");
    assert!(j["pipeline"].as_str().unwrap().starts_with("ivf16/"), "{j}");
}
