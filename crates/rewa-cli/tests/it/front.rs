// Regression tests for the front ends' handling of files, sizes and failures: outputs onto
// symlinks and special files, checks before writes, training runs that fail without harm,
// extreme sizes refused with an error instead of a panic, quoted model paths, and what
// `encode`, `.bvecs` input and `train --pairs` produce.

use crate::common::{fails, json, ok, ok_args, refused, rewa, run};
use rewa::{Encoder, EncoderSpec, Metric};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

/// Every file under `dir` with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut m = BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if p.is_dir() {
            for (k, v) in snapshot(&p) {
                m.insert(format!("{name}/{k}"), v);
            }
        } else {
            m.insert(name, std::fs::read(&p).unwrap());
        }
    }
    m
}

/// Names in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Vectors as the CLI loads them with `metric`.
fn load(path: &Path, metric: Metric) -> rewa::Vectors {
    let mut v = rewa::io::read_vectors(path).unwrap();
    if metric.normalizes() {
        v.normalize();
    }
    v
}

/// The payload of a `.npy` written by `encode`: bytes for codes, floats for flat specs.
fn npy_bytes(path: &Path) -> (Vec<usize>, Vec<u8>) {
    let a = rewa::io::read_npy(path).unwrap();
    let bytes = match a.data {
        rewa::io::NpyData::U8(b) => b,
        rewa::io::NpyData::Float(f) => f.iter().flat_map(|x| x.to_le_bytes()).collect(),
        rewa::io::NpyData::Int(_) => panic!("{}: integers", path.display()),
    };
    (a.shape, bytes)
}

#[cfg(unix)]
fn mkfifo(path: &Path) {
    let st = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .unwrap();
    assert!(st.success());
}

#[cfg(unix)]
fn is_fifo(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::symlink_metadata(path)
        .unwrap()
        .file_type()
        .is_fifo()
}

#[cfg(unix)]
#[test]
fn encode_out_onto_a_symlink_writes_its_target_and_refuses_special_files() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    ok("synth --classes 3 --per-class 10 --dim 16 --out s", d);
    std::fs::create_dir(d.join("real")).unwrap();
    std::fs::write(d.join("real/codes.npy"), b"old").unwrap();
    std::os::unix::fs::symlink("real/codes.npy", d.join("link.npy")).unwrap();
    ok(
        "encode --base s/base.npy --encoder hadamard16+sign --out link.npy",
        d,
    );
    let meta = std::fs::symlink_metadata(d.join("link.npy")).unwrap();
    assert!(meta.file_type().is_symlink(), "the link was replaced");
    let (shape, _) = npy_bytes(&d.join("real/codes.npy"));
    assert_eq!(shape, [30, 8]);
    assert_eq!(names(&d.join("real")), ["codes.npy"], "temporary file left");

    // a FIFO (like /dev/null, not a regular file) is refused and stays a FIFO, as does a
    // link to one; a directory is refused too
    mkfifo(&d.join("pipe.npy"));
    std::os::unix::fs::symlink("pipe.npy", d.join("to-pipe.npy")).unwrap();
    for out in ["pipe.npy", "to-pipe.npy", "real"] {
        refused(
            &format!("encode --base s/base.npy --encoder hadamard16+sign --out {out}"),
            d,
            "refusing to replace it",
        );
    }
    assert!(is_fifo(&d.join("pipe.npy")));
    assert!(std::fs::symlink_metadata(d.join("to-pipe.npy"))
        .unwrap()
        .file_type()
        .is_symlink());
}

#[test]
fn encode_checks_every_input_before_writing_anything() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    ok("synth --classes 3 --per-class 10 --dim 16 --out a", d);
    ok("synth --classes 3 --per-class 10 --dim 12 --out b", d);
    std::fs::write(d.join("out.npy"), b"keep me").unwrap();
    let cmds = [
        // queries of another dimension
        (
            "encode --base a/base.npy --encoder hadamard16+sign --out out.npy \
             --queries b/queries_same.npy --queries-out q.npy",
            "dimension",
        ),
        // missing queries
        (
            "encode --base a/base.npy --encoder hadamard16+sign --out out.npy \
             --queries a/nope.npy --queries-out q.npy",
            "nope.npy",
        ),
        // a spec the data cannot take
        (
            "encode --base a/base.npy --encoder pca32+sign --out out.npy \
             --queries a/queries_same.npy --queries-out q.npy",
            "pca32",
        ),
        // training vectors of another dimension
        (
            "encode --base a/base.npy --encoder hadamard16+sign --out out.npy --train b/base.npy",
            "dimension",
        ),
        // both outputs the same file
        (
            "encode --base a/base.npy --encoder hadamard16+sign --out out.npy \
             --queries a/queries_same.npy --queries-out out.npy",
            "same file",
        ),
    ];
    for (cmd, needle) in cmds {
        fails(cmd, d, needle);
        assert_eq!(
            std::fs::read(d.join("out.npy")).unwrap(),
            b"keep me",
            "{cmd} replaced --out"
        );
        assert!(!d.join("q.npy").exists(), "{cmd} wrote --queries-out");
    }
    // --queries-out onto a FIFO fails before --out is replaced
    #[cfg(unix)]
    {
        mkfifo(&d.join("q.npy"));
        let (ok, _, err) = rewa(
            "encode --base a/base.npy --encoder hadamard16+sign --out out.npy \
             --queries a/queries_same.npy --queries-out q.npy",
            d,
        );
        assert!(!ok);
        assert!(
            err.contains("q.npy") && err.contains("--queries-out"),
            "{err}"
        );
        assert!(is_fifo(&d.join("q.npy")));
        assert_eq!(std::fs::read(d.join("out.npy")).unwrap(), b"keep me");
        std::fs::remove_file(d.join("q.npy")).unwrap();
    }
    // and with good inputs both are written
    ok(
        "encode --base a/base.npy --encoder hadamard16+sign --out out.npy \
         --queries a/queries_same.npy --queries-out q.npy",
        d,
    );
    assert_eq!(npy_bytes(&d.join("out.npy")).0, [30, 8]);
    assert_eq!(npy_bytes(&d.join("q.npy")).0, [30, 8]);
}

#[test]
fn encode_writes_the_library_codes_byte_for_byte() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    ok("synth --classes 5 --per-class 40 --dim 24 --out s", d);
    for (spec, metric) in [
        ("hadamard64+sign", Metric::Cosine),
        ("pca16+int8", Metric::Cosine),
        ("hadamard32+asign", Metric::Ip),
        ("pq4", Metric::L2),
        ("opq4+pq4", Metric::Cosine),
        ("hadamard32", Metric::Cosine),
        ("pca8", Metric::L2),
        ("flat", Metric::Ip),
    ] {
        ok(
            &format!(
                "encode --base s/base.npy --encoder {spec} --metric {metric} --seed 9 \
                 --out out.npy --queries s/queries_same.npy --queries-out q.npy"
            ),
            d,
        );
        let base = load(&d.join("s/base.npy"), metric);
        let queries = load(&d.join("s/queries_same.npy"), metric);
        let es: EncoderSpec = spec.parse().unwrap();
        let enc = Encoder::fit(&es, base.view(), metric, 9).unwrap();
        for (v, file) in [(&base, "out.npy"), (&queries, "q.npy")] {
            let (shape, got) = npy_bytes(&d.join(file));
            let want: Vec<u8> = if es.quantizer == rewa::encode::QuantizerSpec::Flat {
                // flat specs write float32: the transformed vectors
                let t = enc.transform_batch(v.view());
                assert_eq!(shape, [t.len(), t.dim()], "{spec}");
                t.as_slice().iter().flat_map(|x| x.to_le_bytes()).collect()
            } else {
                assert_eq!(shape, [v.len(), enc.code_len()], "{spec}");
                enc.encode_batch(v.view()).unwrap()
            };
            assert!(
                got == want,
                "{spec}: {file} differs from the library's codes"
            );
        }
    }
}

/// Writes `rows` (each `dim` bytes) as `.bvecs` and the same values as float32 `.npy`.
fn bvecs_and_npy(dir: &Path, name: &str, rows: &[Vec<u8>]) {
    let mut b = Vec::new();
    for r in rows {
        b.extend_from_slice(&(r.len() as i32).to_le_bytes());
        b.extend_from_slice(r);
    }
    std::fs::write(dir.join(format!("{name}.bvecs")), b).unwrap();
    let dim = rows[0].len();
    let v = rewa::Vectors::new(
        dim,
        rows.iter()
            .flat_map(|r| r.iter().map(|&x| x as f32))
            .collect(),
    )
    .unwrap();
    rewa::io::write_npy_f32(&dir.join(format!("{name}.npy")), &v).unwrap();
}

#[test]
fn bvecs_input_reads_as_the_same_vectors_as_npy() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    // 60 base and 12 query rows of 10 bytes, spread over the whole byte range
    let row = |i: usize| -> Vec<u8> {
        (0..10)
            .map(|j| ((i * 37 + j * 101 + i * j * 13) % 256) as u8)
            .collect()
    };
    bvecs_and_npy(d, "base", &(0..60).map(row).collect::<Vec<_>>());
    bvecs_and_npy(d, "queries", &(60..72).map(row).collect::<Vec<_>>());
    for spec in ["hadamard16+sign", "int8", "pca4"] {
        for ext in ["bvecs", "npy"] {
            ok(
                &format!(
                    "encode --base base.{ext} --encoder {spec} --metric l2 --out {ext}.out.npy \
                     --queries queries.{ext} --queries-out {ext}.q.npy"
                ),
                d,
            );
        }
        assert_eq!(
            npy_bytes(&d.join("bvecs.out.npy")),
            npy_bytes(&d.join("npy.out.npy")),
            "{spec}"
        );
        assert_eq!(
            npy_bytes(&d.join("bvecs.q.npy")),
            npy_bytes(&d.join("npy.q.npy")),
            "{spec}"
        );
    }
    // eval over the .bvecs files measures what it measures over the .npy files
    let eval = |ext: &str| -> Value {
        let out = ok(
            &format!(
                "eval --base base.{ext} --queries queries.{ext} --encoder hadamard16+int8 \
                 --metric l2 --k 5 --json"
            ),
            d,
        );
        serde_json::from_str(&out).unwrap()
    };
    let (b, n) = (eval("bvecs"), eval("npy"));
    assert_eq!(b["n_base"], 60);
    assert_eq!(b["dim"], 10);
    assert_eq!(b["recall_at_k"], n["recall_at_k"]);
    // a truncated .bvecs is an error naming the file
    let mut bytes = std::fs::read(d.join("base.bvecs")).unwrap();
    bytes.pop();
    std::fs::write(d.join("cut.bvecs"), bytes).unwrap();
    refused(
        "encode --base cut.bvecs --encoder int8 --out x.npy",
        d,
        "cut.bvecs",
    );
}

/// Synthetic data for training tests: 20 classes x 40 vectors in 32 dims.
fn train_data(d: &Path, out: &str) {
    ok_args(
        &[
            "synth",
            "--classes",
            "20",
            "--per-class",
            "40",
            "--dim",
            "32",
            "--new-classes",
            "0",
            "--out",
            out,
        ],
        d,
    );
}

#[test]
fn train_refuses_an_existing_model_and_failed_runs_leave_it_intact() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    train_data(d, "s");
    let train = "train --base s/base.npy --dim 8 --batch 64 --out m";
    ok(&format!("{train} --epochs 2"), d);
    let before = snapshot(&d.join("m"));
    assert_eq!(
        String::from_utf8_lossy(&before["log.jsonl"])
            .lines()
            .count(),
        2
    );
    let listing = names(d);
    // without --force an existing model is refused, before training
    refused(&format!("{train} --epochs 1"), d, "--force");
    // bad settings are refused before anything is written, with or without --force
    for (flags, needle) in [
        ("--weight-decay NaN", "--weight-decay"),
        ("--hidden 0", "--hidden"),
        ("--lr inf", "--lr"),
        ("--val-fraction 0.01", "--val-fraction"),
    ] {
        refused(&format!("{train} --force {flags}"), d, needle);
        refused(&format!("{train} {flags}"), d, "");
    }
    // a run that diverges fails after epochs were written, but to its own directory
    refused(
        &format!("{train} --force --epochs 2 --lr 1e38"),
        d,
        "diverged",
    );
    assert_eq!(
        snapshot(&d.join("m")),
        before,
        "a failed run changed the model"
    );
    assert_eq!(names(d), listing, "a failed run left files behind");
    // a new directory is not created by a refused run
    refused(
        "train --base s/base.npy --dim 8 --out fresh --weight-decay=-1",
        d,
        "--weight-decay",
    );
    assert!(!d.join("fresh").exists());
    // --force replaces the model once the new run has succeeded
    ok(&format!("{train} --force --epochs 3 --seed 5"), d);
    let after = snapshot(&d.join("m"));
    assert_eq!(
        String::from_utf8_lossy(&after["log.jsonl"]).lines().count(),
        3
    );
    assert_ne!(after["model.safetensors"], before["model.safetensors"]);
    assert_eq!(names(d), listing, "a forced run left files behind");
    // an empty directory and a missing one take a run without --force
    std::fs::create_dir(d.join("empty")).unwrap();
    ok(
        "train --base s/base.npy --dim 8 --batch 64 --epochs 1 --out empty",
        d,
    );
    assert!(d.join("empty/model.safetensors").exists());
    // a file is not a directory
    std::fs::write(d.join("file"), b"x").unwrap();
    refused(
        "train --base s/base.npy --dim 8 --out file --force",
        d,
        "not a directory",
    );
}

#[test]
fn extreme_sizes_are_errors_not_panics() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    train_data(d, "s");
    let train = "train --base s/base.npy --dim 8 --out m";
    for (flags, needle) in [
        ("--hidden 0", "--hidden"),
        ("--hidden 18446744073709551615", "--hidden"),
        ("--batch 18446744073709551615", "--batch"),
        ("--batch 0", "--batch"),
        ("--group 9223372036854775808", "--group"),
        ("--group 18446744073709551615", "--group"),
        ("--group 0", "--group"),
        ("--epochs 18446744073709551615", "--epochs"),
    ] {
        refused(&format!("{train} {flags}"), d, needle);
        assert!(!d.join("m").exists(), "{flags} created --out");
    }
    refused(
        "train --base s/base.npy --dim 18446744073709551615 --out m",
        d,
        "--dim",
    );
    for (flags, needle) in [
        ("--classes 18446744073709551615", "--classes"),
        ("--new-classes 18446744073709551615", "--new-classes"),
        ("--per-class 1000000000000", "--per-class"),
        ("--per-class 18446744073709551615", "--per-class"),
        (
            "--queries-per-class 18446744073709551615",
            "--queries-per-class",
        ),
        ("--dim 18446744073709551615", "--dim"),
        ("--classes 100000 --per-class 100000", "TiB limit"),
    ] {
        refused(&format!("synth --out big {flags}"), d, needle);
        assert!(!d.join("big").exists(), "{flags} created --out");
    }
}

#[test]
fn train_refuses_a_validation_split_too_small_to_measure() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    // 2 classes x 15 = 30 vectors: a tenth is 3 validation vectors
    ok(
        "synth --classes 2 --per-class 15 --dim 16 --new-classes 0 --out s",
        d,
    );
    let train = "train --base s/base.npy --dim 4 --batch 16 --epochs 1 --out m";
    refused(train, d, "--val-fraction");
    refused(&format!("{train} --val-fraction 0"), d, "validation split");
    assert!(!d.join("m").exists());
    // 15 held out and 15 trained on: a best epoch with a measured validation recall
    let out = ok(&format!("{train} --val-fraction 0.5 --json"), d);
    let j: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["n_val"], 15);
    let r = j["best"]["val_recall"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&r), "{j}");
    // the same for pairs: one judged query leaves none to validate on
    std::fs::write(
        d.join("ids.txt"),
        (0..30).map(|i| format!("d{i}\n")).collect::<String>(),
    )
    .unwrap();
    std::fs::write(
        d.join("qids.txt"),
        (0..20).map(|i| format!("q{i}\n")).collect::<String>(),
    )
    .unwrap();
    std::fs::write(d.join("one.tsv"), "q0\td1\t1\n").unwrap();
    refused(
        &format!(
            "{train} --force --pairs s/queries_same.npy --qrels one.tsv --doc-ids ids.txt \
             --query-ids qids.txt"
        ),
        d,
        "--val-fraction",
    );
}

#[test]
fn train_with_pairs_writes_a_model_that_evaluates() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    train_data(d, "s");
    // each query is relevant to the 3 base vectors nearest to it
    let base = load(&d.join("s/base.npy"), Metric::Cosine);
    let queries = load(&d.join("s/queries_same.npy"), Metric::Cosine);
    let nn = rewa::search::exact_search(base.view(), queries.view(), Metric::Cosine, 3);
    let mut tsv = String::from("query-id\tcorpus-id\tscore\n");
    for (q, hits) in nn.iter().enumerate() {
        for h in hits {
            tsv += &format!("q{q}\td{}\t1\n", h.id);
        }
    }
    std::fs::write(d.join("qrels.tsv"), tsv).unwrap();
    let ids = |p: &str, n: usize| (0..n).map(|i| format!("{p}{i}\n")).collect::<String>();
    std::fs::write(d.join("doc_ids.txt"), ids("d", base.len())).unwrap();
    std::fs::write(d.join("query_ids.txt"), ids("q", queries.len())).unwrap();
    let out = ok(
        "train --base s/base.npy --dim 8 --batch 64 --epochs 3 --out m \
         --pairs s/queries_same.npy --qrels qrels.tsv --doc-ids doc_ids.txt \
         --query-ids query_ids.txt --json",
        d,
    );
    let j: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["score_name"], "val_qrels_recall");
    assert_eq!(j["n_val"], 20, "a tenth of the 200 queries: {j}");
    assert_eq!(j["n_train"], 180 * 3, "three pairs per training query: {j}");
    let qr = j["best"]["val_qrels_recall"].as_f64().unwrap();
    // measured 0.50 for this seed
    assert!(qr > 0.4, "{j}");
    let cfg: Value =
        serde_json::from_slice(&std::fs::read(d.join("m/config.json")).unwrap()).unwrap();
    assert_eq!(cfg["training"]["supervision"], "pairs");
    assert_eq!(
        (cfg["dim_in"].as_u64(), cfg["dim_out"].as_u64()),
        (Some(32), Some(8))
    );
    let e: Value = serde_json::from_str(&ok(
        "eval --base s/base.npy --queries s/queries_same.npy --encoder learned=m+int8 --json",
        d,
    ))
    .unwrap();
    assert_eq!(e["bytes_per_vector"], 8);
    // measured 0.406 for this seed
    assert!(e["recall_at_k"].as_f64().unwrap() > 0.35, "{e}");
}

#[test]
fn paths_with_spaces_plus_and_comma_work_quoted_in_specs() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    train_data(d, "data dir");
    ok_args(
        &[
            "train",
            "--base",
            "data dir/base.npy",
            "--dim",
            "8",
            "--batch",
            "64",
            "--epochs",
            "1",
            "--out",
            "my models/a+b,c",
        ],
        d,
    );
    assert!(d.join("my models/a+b,c/model.safetensors").exists());
    let spec = "learned=\"my models/a+b,c\"+sign";
    let out = ok_args(
        &[
            "eval",
            "--base",
            "data dir/base.npy",
            "--queries",
            "data dir/queries_same.npy",
            "--encoder",
            spec,
            "--json",
        ],
        d,
    );
    let j: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["spec"], spec);
    assert_eq!(j["bytes_per_vector"], 8);
    ok_args(
        &[
            "encode",
            "--base",
            "data dir/base.npy",
            "--encoder",
            spec,
            "--out",
            "out dir codes.npy",
        ],
        d,
    );
    assert_eq!(npy_bytes(&d.join("out dir codes.npy")).0, [800, 8]);
    // an index whose pipeline names the quoted path builds, reopens and searches
    let pipeline = "learned=\"my models/a+b,c\"+sign:100,exact:10";
    ok_args(
        &[
            "build",
            "--base",
            "data dir/base.npy",
            "--pipeline",
            pipeline,
            "--out",
            "the index",
        ],
        d,
    );
    let info: Value =
        serde_json::from_str(&ok_args(&["info", "--index", "the index", "--json"], d)).unwrap();
    assert_eq!(info["pipeline"], pipeline);
    let s: Value = serde_json::from_str(&ok_args(
        &[
            "search",
            "--index",
            "the index",
            "--queries",
            "data dir/queries_same.npy",
            "--out",
            "hits file.tsv",
            "--json",
        ],
        d,
    ))
    .unwrap();
    assert_eq!(s["n_queries"], 200);
    let hits = std::fs::read_to_string(d.join("hits file.tsv")).unwrap();
    assert_eq!(hits.lines().count(), 1 + 200 * 10);
    // unquoted, the comma is refused with a hint
    let out = run(
        &[
            "eval",
            "--base",
            "data dir/base.npy",
            "--queries",
            "data dir/queries_same.npy",
            "--encoder",
            "learned=my models/a,c+sign",
        ],
        d,
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("must be quoted"), "{err}");
}

/// `rewa info` showed the text model an index was built with only under --json.
#[test]
fn info_shows_the_text_model_without_json() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let m = crate::embed::tiny_model(&d.join("m"));
    std::fs::write(
        d.join("c.jsonl"),
        "{\"_id\": \"a\", \"text\": \"the cat sat\"}\n{\"_id\": \"b\", \"text\": \"a big dog\"}\n",
    )
    .unwrap();
    ok(
        &format!(
            "build --text c.jsonl --model {} --pipeline exact:2 --out idx",
            m.display()
        ),
        d,
    );
    let tm = json("info --index idx", d)["text_model"].clone();
    let sha = tm["weights_sha256"].as_str().unwrap();
    assert_eq!(sha.len(), 64, "{tm}");
    let out = ok("info --index idx", d);
    let want = format!(
        "text model      {} (weights sha256 {}..., {} word pieces per text)",
        tm["dir"].as_str().unwrap(),
        &sha[..16],
        tm["max_seq_len"]
    );
    assert!(out.contains(&want), "{out}");
    assert!(
        out.contains("\ncorpus ids      stored (hits name documents)\n"),
        "{out}"
    );
    // an index of vectors has neither line
    ok(
        "synth --classes 2 --per-class 5 --dim 8 --new-classes 0 --out s",
        d,
    );
    ok("build --base s/base.npy --pipeline exact:2 --out v", d);
    let out = ok("info --index v", d);
    assert!(
        !out.contains("text model") && !out.contains("corpus ids"),
        "{out}"
    );
}
