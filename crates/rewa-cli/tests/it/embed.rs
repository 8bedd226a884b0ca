// `rewa embed`: input checks (they run before the model loads, so these tests need no model)
// and, when a model is at hand, one real run.

use crate::common::{fails, json, ok};
use std::path::{Path, PathBuf};

/// Writes `bytes` to `dir/name`.
fn file(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::write(dir.join(name), bytes).unwrap();
}

#[test]
fn embed_refuses_bad_texts_naming_the_line() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    file(
        d,
        "empty.jsonl",
        b"{\"_id\": \"a\", \"title\": \"T\", \"text\": \"x\"}\n{\"_id\": \"b\", \"title\": \" \", \"text\": \"\"}\n",
    );
    file(d, "utf8.txt", b"fine\nalso fine\nbroken \xc3\x28 here\n");
    file(
        d,
        "nofield.jsonl",
        b"{\"_id\": \"a\", \"text\": \"x\"}\n{\"_id\": \"b\", \"title\": \"only a title\"}\n",
    );
    file(d, "named.jsonl", b"{\"body\": \"x\"}\n{\"text\": \"y\"}\n");
    file(d, "notjson.jsonl", b"{\"text\": \"x\"}\nnot json\n");
    file(d, "blank.txt", b"one\n\nthree\n");
    file(d, "cols.tsv", b"d1\ta\tb\tc\n");
    file(d, "none.txt", b"");
    file(d, "texts.csv", b"a,b\n");
    // The model directory does not exist: each input error must come first.
    let cmd = |input: &str, extra: &str| {
        format!("embed --model no-model --input {input} --out o.npy {extra}")
    };
    fails(&cmd("empty.jsonl", ""), d, "empty.jsonl line 2: empty text");
    fails(&cmd("utf8.txt", ""), d, "utf8.txt line 3: invalid UTF-8");
    fails(
        &cmd("nofield.jsonl", ""),
        d,
        "nofield.jsonl line 2: no field \"text\"",
    );
    fails(
        &cmd("named.jsonl", "--field body"),
        d,
        "named.jsonl line 2: no field \"body\"",
    );
    fails(
        &cmd("notjson.jsonl", ""),
        d,
        "notjson.jsonl line 2: not JSON",
    );
    fails(&cmd("blank.txt", ""), d, "blank.txt line 2: empty text");
    fails(&cmd("cols.tsv", ""), d, "cols.tsv line 1: 4 columns");
    fails(&cmd("none.txt", ""), d, "holds no texts");
    fails(&cmd("texts.csv", ""), d, "unknown text format");
    fails(&cmd("missing.jsonl", ""), d, "missing.jsonl");
    fails(&cmd("blank.txt", "--batch 0"), d, "--batch");
    fails(&cmd("blank.txt", "--ids-out o.npy"), d, "same file");
    assert!(!d.join("o.npy").exists());
}

#[test]
fn embed_refuses_a_missing_or_broken_model() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    file(d, "t.txt", b"a text\n");
    fails(
        "embed --model no-model --input t.txt --out o.npy",
        d,
        "modules.json",
    );
    std::fs::create_dir(d.join("m")).unwrap();
    file(
        d.join("m").as_path(),
        "modules.json",
        br#"[{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "2_Dense", "type": "sentence_transformers.models.Dense"}]"#,
    );
    fails("embed --model m --input t.txt --out o.npy", d, "Dense");
    assert!(!d.join("o.npy").exists());
}

/// The MiniLM directory from `scripts/fetch-models.sh` (env `REWA_MODELS`, else `models/`
/// beside the repository), or None with a notice; `REWA_REQUIRE_MODELS=1` makes a missing
/// model a failure.
pub(crate) fn minilm() -> Option<PathBuf> {
    let root = match std::env::var_os("REWA_MODELS") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../models"),
    };
    let dir = root.join("all-MiniLM-L6-v2");
    if dir.join("model.safetensors").is_file() {
        return Some(std::fs::canonicalize(dir).unwrap());
    }
    let msg = format!(
        "no model at {} (scripts/fetch-models.sh DIR, then REWA_MODELS=DIR)",
        dir.display()
    );
    assert!(
        std::env::var("REWA_REQUIRE_MODELS").map_or(true, |v| v != "1"),
        "REWA_REQUIRE_MODELS=1 but {msg}"
    );
    eprintln!("skipped: {msg}");
    None
}

/// A copy of `model` at `dir` whose weights differ from it in one bit (the other files are
/// links to the model's): a model a text index must refuse.
pub(crate) fn model_with_other_weights(model: &Path, dir: &Path) {
    std::fs::create_dir(dir).unwrap();
    for e in std::fs::read_dir(model).unwrap() {
        let e = e.unwrap();
        if e.file_name() != "model.safetensors" {
            std::os::unix::fs::symlink(e.path(), dir.join(e.file_name())).unwrap();
        }
    }
    let mut w = std::fs::read(model.join("model.safetensors")).unwrap();
    let last = w.len() - 1;
    w[last] ^= 1;
    std::fs::write(dir.join("model.safetensors"), w).unwrap();
}

#[test]
fn embed_minilm_writes_vectors_ids_and_a_summary() {
    let Some(model) = minilm() else { return };
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let long = "word ".repeat(400);
    let jsonl = format!(
        "{{\"_id\": \"d1\", \"title\": \"A title\", \"text\": \"Some text.\"}}\n\
         {{\"_id\": 2, \"text\": \"{long}\"}}\n\
         {{\"_id\": \"d3\", \"title\": \"\", \"text\": \"Short.\"}}\n"
    );
    file(d, "c.jsonl", jsonl.as_bytes());
    let j = json(
        &format!(
            "embed --model {} --input c.jsonl --out v.npy --ids-out ids.txt --batch 2",
            model.display()
        ),
        d,
    );
    assert_eq!(j["count"], 3, "{j}");
    assert_eq!(j["dim"], 384, "{j}");
    assert_eq!(j["max_seq_len"], 256, "{j}");
    // [CLS] a title some text . [SEP] = 7; the long text is cut to 256; [CLS] short . [SEP] = 4
    assert_eq!(j["tokens"], 7 + 256 + 4, "{j}");
    assert!(j["seconds"].as_f64().unwrap() > 0.0, "{j}");
    assert!(j["load_seconds"].as_f64().unwrap() > 0.0, "{j}");
    assert_eq!(
        std::fs::read_to_string(d.join("ids.txt")).unwrap(),
        "d1\n2\nd3\n"
    );
    let v = rewa::io::read_vectors(&d.join("v.npy")).unwrap();
    assert_eq!((v.len(), v.dim()), (3, 384));
    for i in 0..3 {
        let norm: f32 = v.row(i).iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "row {i} norm {norm}");
    }
    // --max-seq-len cuts further; a length past the model's positions is refused.
    let j = json(
        &format!(
            "embed --model {} --input c.jsonl --out v.npy --max-seq-len 16",
            model.display()
        ),
        d,
    );
    assert_eq!(j["tokens"], 7 + 16 + 4, "{j}");
    fails(
        &format!(
            "embed --model {} --input c.jsonl --out v.npy --max-seq-len 4096",
            model.display()
        ),
        d,
        "max_seq_len 4096",
    );
}

#[test]
fn embed_resume_continues_a_stopped_run_to_the_same_bytes() {
    let Some(model) = minilm() else { return };
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let texts: String = (0..7)
        .map(|i| format!("text number {i} {}\n", "more words ".repeat(i * 3)))
        .collect();
    file(d, "t.txt", texts.as_bytes());
    let base = format!("embed --model {} --input t.txt --batch 2", model.display());
    let run = |args: &str, stop: Option<&str>| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_rewa"));
        c.args(format!("{base} {args}").split_whitespace())
            .current_dir(d)
            .env("REWA_EMBED_CHUNK", "3");
        if let Some(n) = stop {
            c.env("REWA_EMBED_STOP_AFTER_CHUNKS", n);
        }
        c.output().unwrap()
    };
    // One uninterrupted run, in chunks of 3 texts.
    let whole = run("--out whole.npy --json", None);
    assert!(
        whole.status.success(),
        "{}",
        String::from_utf8_lossy(&whole.stderr)
    );
    let whole_json: serde_json::Value = serde_json::from_slice(&whole.stdout).unwrap();
    assert_eq!(whole_json["resumed_from"], 0);

    // Stopped after the first chunk: no output, the partial files stay.
    let stopped = run("--out r.npy", Some("1"));
    assert!(!stopped.status.success());
    assert!(String::from_utf8_lossy(&stopped.stderr).contains("stopped after 1 chunks"));
    assert!(!d.join("r.npy").exists());
    assert!(d.join("r.npy.partial.json").exists());
    // Without --resume the leftover is refused, not overwritten.
    let refused = run("--out r.npy", None);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--resume"));
    // A run stopped between appending rows and recording them leaves extra bytes: cut back.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(d.join("r.npy.partial.npy"))
        .unwrap();
    std::io::Write::write_all(&mut f, &[7u8; 100]).unwrap();
    drop(f);
    let resumed = run("--out r.npy --resume --json", None);
    assert!(
        resumed.status.success(),
        "{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    let j: serde_json::Value = serde_json::from_slice(&resumed.stdout).unwrap();
    assert_eq!(j["resumed_from"], 3, "{j}");
    assert_eq!(j["count"], 7, "{j}");
    assert_eq!(j["tokens"], whole_json["tokens"], "{j}");
    assert_eq!(
        std::fs::read(d.join("r.npy")).unwrap(),
        std::fs::read(d.join("whole.npy")).unwrap()
    );
    assert!(!d.join("r.npy.partial.json").exists());
    assert!(!d.join("r.npy.partial.npy").exists());
    // Written through a symlink, --out stays a link.
    std::os::unix::fs::symlink("whole.npy", d.join("link.npy")).unwrap();
    assert!(run("--out link.npy", None).status.success());
    assert!(std::fs::symlink_metadata(d.join("link.npy"))
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(
        std::fs::read(d.join("r.npy")).unwrap(),
        std::fs::read(d.join("whole.npy")).unwrap()
    );

    // A partial run from another input is refused by --resume.
    assert!(!run("--out s.npy", Some("1")).status.success());
    std::fs::write(d.join("t.txt"), "something else\n").unwrap();
    let other = run("--out s.npy --resume", None);
    assert!(!other.status.success());
    assert!(String::from_utf8_lossy(&other.stderr).contains("other inputs"));
}

/// `rewa embed --attention`: a bad spec is refused before the model loads; with MiniLM the
/// mode is recorded in the JSON, keeping every key of these short texts gives full
/// attention's vectors, and `rewa attention fit` writes projections that keys= uses.
#[test]
fn embed_with_rewa_attention() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    std::fs::write(
        d.join("t.txt"),
        "the cat sat on the mat while the dog slept by the warm red door of the old house\na big dog\n",
    )
    .unwrap();
    fails(
        "embed --model no-model --input t.txt --out v.npy --attention rewa:bits=64",
        d,
        "top= is required",
    );
    fails(
        "embed --model no-model --input t.txt --out v.npy --attention sparse",
        d,
        "unknown mode",
    );
    fails("attention cost --attention full", d, "nothing to compare");
    let cost = ok(
        "attention cost --attention rewa:bits=64,top=8 --heads 2 --head-dim 16 --lengths 8,64 --reps 1 --json",
        d,
    );
    let rows: Vec<serde_json::Value> = cost
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2);
    // a text no longer than top runs full attention; a longer one keeps top + the first token
    assert_eq!(rows[0]["cost"]["kept"], 8.0);
    assert_eq!(rows[1]["cost"]["kept"], 9.0);
    let Some(model) = minilm() else { return };
    let m = model.display();
    let full = json(
        &format!("embed --model {m} --input t.txt --out full.npy"),
        d,
    );
    assert_eq!(full["attention"], "full");
    let all = json(
        &format!("embed --model {m} --input t.txt --out all.npy --attention rewa:bits=64,top=200"),
        d,
    );
    assert_eq!(all["attention"], "rewa:bits=64,top=200");
    let read = |f: &str| rewa::io::read_vectors(&d.join(f)).unwrap();
    assert_eq!(read("full.npy").as_slice(), read("all.npy").as_slice());
    let fit = json(
        &format!("attention fit --model {m} --input t.txt --out keys.safetensors"),
        d,
    );
    assert_eq!(
        (
            fit["layers"].as_u64(),
            fit["heads"].as_u64(),
            fit["head_dim"].as_u64()
        ),
        (Some(6), Some(12), Some(32))
    );
    let few = json(
        &format!("embed --model {m} --input t.txt --out few.npy --attention rewa:bits=16,top=3,keys=keys.safetensors"),
        d,
    );
    assert_eq!(few["attention"], "rewa:bits=16,top=3,keys=keys.safetensors");
    let (a, b) = (read("full.npy"), read("few.npy"));
    let cos: f32 = a.row(0).iter().zip(b.row(0)).map(|(x, y)| x * y).sum();
    assert!(cos < 0.9999 && cos > 0.5, "top 3 of ~20 keys: cosine {cos}");
}
