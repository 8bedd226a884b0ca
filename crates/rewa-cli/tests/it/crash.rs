// A `rewa add`, `rewa delete` or `rewa compact` killed with SIGKILL at any moment leaves an
// index that opens and holds exactly the old or the new data; two writers at once never lose
// an update or break the index.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn rewa(cmd: &str, dir: &Path) {
    crate::common::ok(cmd, dir);
}

/// What the index in `dir` holds: its count, and the ids it returns for a few queries.
fn state(dir: &Path) -> (usize, Vec<Vec<rewa::Hit>>) {
    let index = rewa::Index::open(dir).expect("the index must open after a kill");
    let qs = rewa::io::read_vectors(&dir.join("../q.npy")).unwrap();
    let p = rewa::SearchParams::default();
    let hits = (0..qs.len())
        .map(|i| index.search(qs.row(i), &p).unwrap())
        .collect();
    (index.len(), hits)
}

fn copy_dir(from: &Path, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn sigkill_during_add_leaves_old_or_new_index() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    // base 4000 and addition 10000 vectors, 64-dim; queries are the synth's held-out ones
    rewa(
        "synth --classes 40 --per-class 100 --dim 64 --new-classes 0 --seed 1 --out a",
        d,
    );
    rewa(
        "synth --classes 100 --per-class 100 --dim 64 --new-classes 0 --seed 2 --out b",
        d,
    );
    std::fs::copy(d.join("a/queries_same.npy"), d.join("q.npy")).unwrap();
    rewa(
        "build --base a/base.npy --pipeline hadamard128+sign:200,exact:10 --out old",
        d,
    );
    copy_dir(&d.join("old"), &d.join("new"));
    rewa("add --index new --base b/base.npy", d);
    let old = state(&d.join("old"));
    let new = state(&d.join("new"));
    assert_eq!((old.0, new.0), (4000, 14000));
    assert_ne!(old.1, new.1, "the addition must change some results");

    let work = d.join("work");
    let add = ["add", "--index", "work", "--base", "b/base.npy"];
    let run = |pause: Option<&str>, after: Option<Duration>| killed(d, "old", &add, pause, after);
    // killed with new data files written but the manifest not replaced: the old index
    assert_eq!(run(Some("data"), None), old);
    // the next add leaves the dead writer's files alone (no file is rewritten in place) and
    // gives the new index
    rewa("add --index work --base b/base.npy", d);
    assert_eq!(state(&work), new);
    // ... and removes them: the lock, the manifest, one code set, vectors, params
    let names: Vec<String> = std::fs::read_dir(&work)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(
        names.len(),
        5,
        "a dead writer's files were left behind: {names:?}"
    );
    // killed after the manifest rename: the next add removes the old generation it left
    run(Some("manifest"), None);
    rewa("add --index work --base a/base.npy", d);
    // lock, manifest, params, the merged segment's codes and vectors, and the new segment's
    // (4,000 rows beside 14,000: not merged)
    assert_eq!(std::fs::read_dir(&work).unwrap().count(), 7);
    // killed after the manifest rename, before old files are deleted: the new index
    assert_eq!(run(Some("manifest"), None), new);
    // killed at spread-out moments of the whole command: always exactly one of the two
    for ms in [10u64, 60, 150] {
        let s = run(None, Some(Duration::from_millis(ms)));
        assert!(
            s == old || s == new,
            "killed after {ms} ms: {} vectors, neither old nor new",
            s.0
        );
    }
}

/// Copies `from` to `work`, runs `rewa ARGS` there (in `d`), kills it with SIGKILL when save
/// announces `pause` (or after `after`), and returns what the index in `work` then holds.
fn killed(
    d: &Path,
    from: &str,
    args: &[&str],
    pause: Option<&str>,
    after: Option<Duration>,
) -> (usize, Vec<Vec<rewa::Hit>>) {
    let work = d.join("work");
    copy_dir(&d.join(from), &work);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rewa"));
    cmd.args(args)
        .current_dir(d)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(p) = pause {
        cmd.env("REWA_SAVE_PAUSE", format!("{p}:60000"));
    }
    let mut child = cmd.spawn().unwrap();
    if let Some(p) = pause {
        let want = format!("paused:{p}");
        let err = BufReader::new(child.stderr.take().unwrap());
        let seen = err.lines().any(|l| l.unwrap().contains(&want));
        assert!(seen, "the child never reached {want}");
    } else if let Some(after) = after {
        let t0 = Instant::now();
        while t0.elapsed() < after && child.try_wait().unwrap().is_none() {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    child.kill().unwrap(); // SIGKILL on Unix
    child.wait().unwrap();
    state(&work)
}

#[test]
fn sigkill_during_delete_and_compact_leaves_old_or_new_index() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    rewa(
        "synth --classes 40 --per-class 100 --dim 64 --new-classes 0 --seed 1 --out a",
        d,
    );
    std::fs::copy(d.join("a/queries_same.npy"), d.join("q.npy")).unwrap();
    rewa(
        "build --base a/base.npy --pipeline ivf16/4+hadamard128+sign:200,exact:10 --out old",
        d,
    );
    // delete every third id below 3000: the queries' neighbours among them
    let ids: String = (0..3000).step_by(3).map(|i| format!("{i}\n")).collect();
    std::fs::write(d.join("ids.txt"), ids).unwrap();
    copy_dir(&d.join("old"), &d.join("del"));
    rewa("delete --index del --ids ids.txt", d);
    copy_dir(&d.join("del"), &d.join("comp"));
    rewa("compact --index comp", d);
    let (old, del, comp) = (
        state(&d.join("old")),
        state(&d.join("del")),
        state(&d.join("comp")),
    );
    assert_eq!((old.0, del.0, comp.0), (4000, 3000, 3000));
    assert_ne!(old.1, del.1, "the deletion must change some results");
    assert_eq!(del.1, comp.1, "compaction changes no result");
    assert!(del
        .1
        .iter()
        .flatten()
        .all(|h| h.id >= 3000 || h.id % 3 != 0));
    let delete = ["delete", "--index", "work", "--ids", "ids.txt"];
    let compact = ["compact", "--index", "work"];
    assert_eq!(killed(d, "old", &delete, Some("data"), None), old);
    assert_eq!(killed(d, "old", &delete, Some("manifest"), None), del);
    assert_eq!(killed(d, "del", &compact, Some("data"), None), del);
    assert_eq!(killed(d, "del", &compact, Some("manifest"), None), comp);
    // after a kill, the next write removes the dead writer's files: compact then holds the
    // lock, the manifest, params and one segment's codes, lists and vectors
    killed(d, "del", &compact, Some("data"), None);
    rewa("compact --index work", d);
    assert_eq!(state(&d.join("work")), comp);
    let names: Vec<String> = std::fs::read_dir(d.join("work"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 7, "{names:?}");
    for ms in [5u64, 30, 80] {
        let s = killed(d, "old", &delete, None, Some(Duration::from_millis(ms)));
        assert!(
            s == old || s == del,
            "delete killed after {ms} ms: neither old nor new"
        );
        let s = killed(d, "del", &compact, None, Some(Duration::from_millis(ms)));
        assert!(
            s == del,
            "compact killed after {ms} ms: not the index it started from"
        );
    }
}

#[test]
fn a_second_writer_waits_or_is_refused_naming_the_first() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    rewa(
        "synth --classes 10 --per-class 50 --dim 32 --new-classes 0 --seed 1 --out a",
        d,
    );
    std::fs::copy(d.join("a/queries_same.npy"), d.join("q.npy")).unwrap();
    rewa(
        "build --base a/base.npy --pipeline hadamard64+sign:100,exact:10 --out idx",
        d,
    );
    // The first writer pauses inside its save, holding the lock.
    let mut first = Command::new(env!("CARGO_BIN_EXE_rewa"))
        .args(["add", "--index", "idx", "--base", "a/base.npy"])
        .env("REWA_SAVE_PAUSE", "data:3000")
        .current_dir(d)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(first.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains("paused:data") {
        line.clear();
        assert!(
            err.read_line(&mut line).unwrap() > 0,
            "the first writer never paused"
        );
    }
    // A second writer without --wait-lock fails at once, naming the first one's pid.
    crate::common::fails(
        "add --index idx --base a/base.npy",
        d,
        &format!("being written by process {}", first.id()),
    );
    crate::common::fails(
        "tune --index idx --queries q.npy",
        d,
        &format!("being written by process {}", first.id()),
    );
    // With --wait-lock it waits for the first and then adds on top of its result.
    rewa("add --index idx --base a/base.npy --wait-lock 60", d);
    assert!(first.wait().unwrap().success());
    let (n, _) = state(&d.join("idx"));
    assert_eq!(n, 500 * 3, "an update was lost");
}

/// Copies a directory tree (an index and its `docs/`).
fn copy_tree(from: &Path, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// What an index with documents shows a reader, checked to agree: every live row (below
/// `next_id`, not deleted) has its document (its fields name its row) and passes a filter
/// every document passes; no filter or BM25 hit is a row that is not live. Returns the live
/// rows.
fn agreeing(dir: &Path) -> Vec<u32> {
    let index = rewa::Index::open(dir).expect("the index must open after a kill");
    let docs = rewa_docs::Docs::open(dir)
        .expect("the documents must open after a kill")
        .expect("the documents must be there");
    let live: Vec<u32> = index.live_ids().collect();
    assert_eq!(live.len(), index.len());
    for (r, f) in live.iter().zip(docs.get(&live, None).unwrap()) {
        let f = f.unwrap_or_else(|| panic!("row {r} has no document"));
        assert_eq!(f["n"], *r as u64, "row {r} shows another row's fields");
    }
    let all: rewa_docs::Filter =
        r#"{"must": [{"key": "n", "range": {"gte": 0}}]}"#.parse().unwrap();
    let qs = rewa::io::read_vectors(&dir.join("../q.npy")).unwrap();
    let q = rewa::Metric::Cosine.prepare(qs.view()).unwrap();
    let texts: Vec<String> = (0..q.len()).map(|i| format!("record {}", i * 37)).collect();
    for mode in [rewa_docs::Mode::Dense, rewa_docs::Mode::Bm25] {
        let hits = rewa_docs::search(
            &index,
            Some(&docs),
            &rewa_docs::Query {
                k: 3000,
                mode,
                pipeline: Some("exact:3000".parse().unwrap()),
                filter: Some(&all),
                vectors: Some(&q),
                texts: Some(&texts),
                ..Default::default()
            },
        )
        .unwrap();
        for h in hits.iter().flatten() {
            assert!(
                live.binary_search(&h.id).is_ok(),
                "{mode}: row {} is not live",
                h.id
            );
        }
        if mode == rewa_docs::Mode::Dense {
            assert!(
                hits.iter().all(|h| h.len() == live.len()),
                "a live row fails the filter"
            );
        }
    }
    live
}

/// Runs `rewa CMD` in `d` and kills it with SIGKILL when its save announces `pause`.
fn kill_at(d: &Path, cmd: &str, pause: &str) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_rewa"))
        .args(cmd.split_whitespace())
        .env("REWA_SAVE_PAUSE", format!("{pause}:60000"))
        .current_dir(d)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let err = BufReader::new(child.stderr.take().unwrap());
    let want = format!("paused:{pause}");
    assert!(
        err.lines().any(|l| l.unwrap().contains(&want)),
        "never reached {want}"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Writes `n` records (`{"n": row, "text": "record <row>"}`) for rows `first..`.
fn fields(path: &Path, first: usize, n: usize) {
    let s: String = (first..first + n)
        .map(|i| format!("{{\"n\": {i}, \"text\": \"record {i}\"}}\n"))
        .collect();
    std::fs::write(path, s).unwrap();
}

/// Runs `rewa ARGS` on a copy of `from` in `work`, killed with SIGKILL at the save pause
/// `pause` or after `after`; returns the live rows of what is left (checked to agree).
fn killed_docs(
    d: &Path,
    from: &str,
    args: &[&str],
    pause: Option<&str>,
    after: Option<Duration>,
) -> Vec<u32> {
    let work = d.join("work");
    copy_tree(&d.join(from), &work);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rewa"));
    cmd.args(args)
        .current_dir(d)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(p) = pause {
        cmd.env("REWA_SAVE_PAUSE", format!("{p}:60000"));
    }
    let mut child = cmd.spawn().unwrap();
    if let Some(p) = pause {
        let want = format!("paused:{p}");
        let err = BufReader::new(child.stderr.take().unwrap());
        assert!(
            err.lines().any(|l| l.unwrap().contains(&want)),
            "never reached {want}"
        );
    } else if let Some(after) = after {
        let t0 = Instant::now();
        while t0.elapsed() < after && child.try_wait().unwrap().is_none() {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    agreeing(&work)
}

#[test]
fn sigkill_at_any_point_leaves_vectors_and_documents_agreeing() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    rewa(
        "synth --classes 20 --per-class 50 --dim 32 --new-classes 0 --seed 1 --out a",
        d,
    );
    rewa(
        "synth --classes 10 --per-class 50 --dim 32 --new-classes 0 --seed 2 --out b",
        d,
    );
    std::fs::copy(d.join("a/queries_same.npy"), d.join("q.npy")).unwrap();
    fields(&d.join("fa.jsonl"), 0, 1000);
    fields(&d.join("fb.jsonl"), 1000, 500);
    rewa(
        "build --base a/base.npy --fields fa.jsonl --pipeline hadamard64+sign:200,exact:10 --out old",
        d,
    );
    let old: Vec<u32> = (0..1000).collect();
    let new: Vec<u32> = (0..1500).collect();
    assert_eq!(agreeing(&d.join("old")), old);
    // a build killed after its documents' commit, before the manifest: no index, and the
    // next build takes the folder without --force (the documents are a build's leftover)
    let build = "build --base a/base.npy --fields fa.jsonl --pipeline hadamard64+sign:200,exact:10 --out dead";
    kill_at(d, build, "docs");
    assert!(d.join("dead/docs").is_dir());
    assert!(
        rewa::Index::open(&d.join("dead")).is_err(),
        "a killed build left an index"
    );
    rewa(build, d);
    assert_eq!(agreeing(&d.join("dead")), old);
    // a rebuild (--force) killed there: the old index with its own documents; then done
    fields(&d.join("f500.jsonl"), 0, 500);
    let rebuild = "build --base b/base.npy --fields f500.jsonl --pipeline hadamard64+sign:200,exact:10 --out dead --force";
    for pause in ["docs", "manifest"] {
        kill_at(d, rebuild, pause);
        let want: Vec<u32> = if pause == "docs" {
            old.clone()
        } else {
            (0..500).collect()
        };
        assert_eq!(agreeing(&d.join("dead")), want, "rebuild killed at {pause}");
        // the next writer puts things in order, whichever manifest is live
        rewa(&format!("{build} --force"), d);
        assert_eq!(agreeing(&d.join("dead")), old);
    }
    rewa(rebuild, d);
    assert_eq!(agreeing(&d.join("dead")), (0..500).collect::<Vec<u32>>());
    let add = [
        "add",
        "--index",
        "work",
        "--base",
        "b/base.npy",
        "--fields",
        "fb.jsonl",
    ];
    // documents committed, manifest not: the old rows, the new documents hidden ...
    assert_eq!(killed_docs(d, "old", &add, Some("docs"), None), old);
    // ... and the next add repairs the store and adds again: the new rows, once each
    rewa("add --index work --base b/base.npy --fields fb.jsonl", d);
    assert_eq!(agreeing(&d.join("work")), new);
    // the index's own pause points inside the same add
    assert_eq!(killed_docs(d, "old", &add, Some("data"), None), old);
    assert_eq!(killed_docs(d, "old", &add, Some("manifest"), None), new);
    // a delete killed after the index saved its tombstones, before the documents went: the
    // rows are gone for readers, and the next write removes their documents
    copy_tree(&d.join("work"), &d.join("full"));
    std::fs::write(d.join("ids.txt"), "3\n1004\n77\n").unwrap();
    let delete = ["delete", "--index", "work", "--ids", "ids.txt"];
    let after_delete: Vec<u32> = new
        .iter()
        .copied()
        .filter(|i| ![3, 1004, 77].contains(i))
        .collect();
    assert_eq!(
        killed_docs(d, "full", &delete, Some("docs-delete"), None),
        after_delete
    );
    rewa("compact --index work", d);
    assert_eq!(agreeing(&d.join("work")), after_delete);
    let docs = rewa_docs::Docs::open(&d.join("work")).unwrap().unwrap();
    assert!(docs
        .get(&[3, 1004, 77], None)
        .unwrap()
        .iter()
        .all(Option::is_none));
    assert_eq!(killed_docs(d, "full", &delete, Some("data"), None), new);
    // killed at spread-out moments: always the old or the new rows, agreeing
    for ms in [10u64, 40, 120] {
        let s = killed_docs(d, "old", &add, None, Some(Duration::from_millis(ms)));
        assert!(
            s == old || s == new,
            "add killed after {ms} ms: {} rows",
            s.len()
        );
        let s = killed_docs(d, "full", &delete, None, Some(Duration::from_millis(ms)));
        assert!(
            s == new || s == after_delete,
            "delete killed after {ms} ms: {} rows",
            s.len()
        );
    }
}
