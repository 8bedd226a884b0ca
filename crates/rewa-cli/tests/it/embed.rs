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
    file(
        d,
        "mixed.jsonl",
        b"{\"_id\": \"1\", \"text\": \"x\"}\n{\"text\": \"y\"}\n",
    );
    file(
        d,
        "bom.jsonl",
        b"\xEF\xBB\xBF{\"_id\": \"a\", \"text\": \"x\"}\n",
    );
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
    fails(
        &cmd("mixed.jsonl", ""),
        d,
        "mixed.jsonl line 2: no \"_id\", but line 1 has one",
    );
    // the byte order mark is skipped: the texts pass, and the missing model is what fails
    fails(&cmd("bom.jsonl", ""), d, "loading the model");
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

/// A copy of rewa-embed's tiny BERT fixture (dim 16, 16 word pieces per text, seeded random
/// weights) at `dst`: a model every test can run, and change.
pub(crate) fn tiny_model(dst: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../rewa-embed/tests/fixtures/tiny-bert");
    fn copy(src: &Path, dst: &Path) {
        std::fs::create_dir_all(dst).unwrap();
        for e in std::fs::read_dir(src).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                copy(&e.path(), &dst.join(e.file_name()));
            } else {
                std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
            }
        }
    }
    copy(&src, dst);
    dst.to_path_buf()
}

/// What a bounded run gave: its exit code and stderr, or `None` when it was still running
/// after 60 s (then it is killed).
pub(crate) fn run_bounded(
    args: &[&str],
    dir: &Path,
    env: &[(&str, &str)],
) -> Option<(Option<i32>, String)> {
    use std::io::Read;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_rewa"))
        .args(args)
        .current_dir(dir)
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut pipe = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        pipe.read_to_string(&mut s).unwrap();
        s
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some((status.code(), reader.join().unwrap()));
        }
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// `run_bounded` that must end in a clean refusal holding `needle`.
fn refused_bounded(args: &[&str], dir: &Path, needle: &str) {
    let Some((code, err)) = run_bounded(args, dir, &[]) else {
        panic!("{args:?} still ran after 60 s");
    };
    assert_eq!(code, Some(1), "{args:?}: {err}");
    assert!(!err.contains("panicked"), "{args:?}: {err}");
    assert!(err.contains(needle), "{args:?}: wanted {needle:?} in {err}");
}

/// --resume checks what the stopped run recorded: weights rewritten in place at the same size,
/// a record with `"chunk": 0` (which once looped for ever), more rows than texts, a record that
/// is not one, and a .partial.npy shorter than its record (counted in rows, not floats) are
/// each refused and leave the run resumable; the resumed run then equals an uninterrupted one.
#[test]
fn embed_resume_refuses_changed_weights_and_impossible_states() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let m = tiny_model(&d.join("m"));
    let texts = "the cat sat on the mat\na big red dog\nthe quick brown fox\nhello world\nthe man and the woman eat food\n";
    file(d, "t.txt", texts.as_bytes());
    let model = m.display().to_string();
    let args = |out: &str, resume: bool| {
        let mut a = vec![
            "embed", "--model", &model, "--input", "t.txt", "--out", out, "--batch", "1",
        ];
        if resume {
            a.push("--resume");
        }
        a.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let run = |out: &str, resume: bool, stop: Option<&str>| {
        let a = args(out, resume);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let mut env = vec![("REWA_EMBED_CHUNK", "1")];
        if let Some(n) = stop {
            env.push(("REWA_EMBED_STOP_AFTER_CHUNKS", n));
        }
        run_bounded(&a, d, &env).expect("still running after 60 s")
    };
    let (code, err) = run("whole.npy", false, None);
    assert_eq!(code, Some(0), "{err}");
    let (code, err) = run("v.npy", false, Some("2"));
    assert_eq!(code, Some(1), "{err}");
    let state_path = d.join("v.npy.partial.json");
    let rows_path = d.join("v.npy.partial.npy");
    let state = std::fs::read_to_string(&state_path).unwrap();
    let rows = std::fs::read(&rows_path).unwrap();
    let j: serde_json::Value = serde_json::from_str(&state).unwrap();
    assert_eq!(
        (j["rows_done"].as_u64(), j["chunk"].as_u64()),
        (Some(2), Some(1))
    );
    assert_eq!(j["weights_sha256"].as_str().map(str::len), Some(64), "{j}");

    let resume_fails = |needle: &str| {
        let (code, err) = run("v.npy", true, None);
        assert_eq!(code, Some(1), "{err}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(err.contains(needle), "wanted {needle:?} in {err}");
    };
    let edited = |changes: &[(&str, u64)]| {
        let mut j: serde_json::Value = serde_json::from_str(&state).unwrap();
        for &(key, value) in changes {
            j[key] = value.into();
        }
        std::fs::write(&state_path, j.to_string()).unwrap();
    };
    edited(&[("chunk", 0)]);
    resume_fails("records an impossible state (chunk 0)");
    edited(&[("rows_done", 7)]);
    resume_fails("records an impossible state (7 of 5 rows done)");
    edited(&[("rows_done", 1), ("chunk", 2)]);
    resume_fails("records an impossible state (1 rows done, not a whole number of chunks of 2)");
    std::fs::write(&state_path, "{\"chunk\": 0}").unwrap();
    resume_fails("is not a state rewa embed wrote");
    std::fs::write(&state_path, &state).unwrap();

    // 2 rows of 16 floats recorded; the file holds 1.
    let header = rows.len() - 2 * 16 * 4;
    std::fs::write(&rows_path, &rows[..header + 16 * 4]).unwrap();
    resume_fails("does not hold the 2 rows its state records");
    std::fs::write(&rows_path, &rows).unwrap();

    // The same size, other weights: one bit of the last float.
    let weights = m.join("model.safetensors");
    let original = std::fs::read(&weights).unwrap();
    let mut other = original.clone();
    *other.last_mut().unwrap() ^= 1;
    std::fs::write(&weights, &other).unwrap();
    resume_fails("changed since the stopped run");
    std::fs::write(&weights, &original).unwrap();

    let (code, err) = run("v.npy", true, None);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        std::fs::read(d.join("v.npy")).unwrap(),
        std::fs::read(d.join("whole.npy")).unwrap()
    );
    assert!(!state_path.exists() && !rows_path.exists());
}

/// A FIFO as --input is refused at once (its texts would be read twice, and the second open
/// waited for ever), by `embed` and by the text commands.
#[test]
fn a_fifo_input_is_refused_not_waited_on() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let made = std::process::Command::new("mkfifo")
        .arg(d.join("f.txt"))
        .status()
        .unwrap();
    assert!(made.success());
    refused_bounded(
        &[
            "embed", "--model", "no-model", "--input", "f.txt", "--out", "o.npy",
        ],
        d,
        "f.txt: not a regular file",
    );
    refused_bounded(
        &[
            "build", "--text", "f.txt", "--model", "no-model", "--out", "idx",
        ],
        d,
        "f.txt: not a regular file",
    );
}

/// When stderr is not a terminal (a log), the progress bar becomes plain `[rewa]` lines.
#[test]
fn embed_prints_progress_lines_into_a_log() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let m = tiny_model(&d.join("m"));
    file(d, "t.txt", b"the cat\na dog\nthe fox\n");
    let model = m.display().to_string();
    let (code, err) = run_bounded(
        &[
            "embed", "--model", &model, "--input", "t.txt", "--out", "v.npy",
        ],
        d,
        &[("REWA_PROGRESS_SECS", "0"), ("REWA_EMBED_CHUNK", "1")],
    )
    .expect("still running after 60 s");
    assert_eq!(code, Some(0), "{err}");
    for n in 1..=3 {
        let want = format!("[rewa] embedding texts {n}/3 (");
        assert!(
            err.lines().any(|l| l.starts_with(&want)),
            "wanted {want:?} in {err}"
        );
    }
}
