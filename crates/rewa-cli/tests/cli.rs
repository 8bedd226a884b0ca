//! Runs the `rewa` binary in a temporary directory and checks stdout and exit codes.

use std::path::Path;
use std::process::Command;

fn rewa(args: &[&str], dir: &Path) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_rewa"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn synth_then_eval_json() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let (ok, _, err) = rewa(
        &[
            "synth",
            "--classes",
            "10",
            "--per-class",
            "30",
            "--dim",
            "64",
            "--new-classes",
            "2",
            "--out",
            "s",
        ],
        d,
    );
    assert!(ok, "{err}");
    for f in [
        "base.npy",
        "labels.npy",
        "queries_same.npy",
        "queries_same_labels.npy",
        "base_new.npy",
        "queries_new.npy",
    ] {
        assert!(d.join("s").join(f).exists(), "{f} missing");
    }
    let (ok, out, err) = rewa(
        &[
            "eval",
            "--base",
            "s/base.npy",
            "--queries",
            "s/queries_same.npy",
            "--encoder",
            "hadamard128+sign",
            "--labels",
            "s/labels.npy",
            "--query-labels",
            "s/queries_same_labels.npy",
            "--json",
        ],
        d,
    );
    assert!(ok, "{err}");
    assert_eq!(
        out.lines().count(),
        1,
        "stdout must hold exactly one JSON object: {out}"
    );
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["spec"], "hadamard128+sign");
    assert_eq!(j["dim"], 64);
    assert_eq!(j["n_base"], 300);
    assert_eq!(j["n_queries"], 100);
    assert_eq!(j["k"], 10);
    assert_eq!(j["bytes_per_vector"], 16);
    assert_eq!(j["compression"], 16.0);
    let r = j["recall_at_k"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&r));
    assert!(j["label_precision_at_k"].as_f64().unwrap() > 0.5, "{j}");
    assert!(j["qps"].as_f64().unwrap() > 0.0);
    assert!(j["fit_seconds"].as_f64().unwrap() >= 0.0);

    // A pipeline ending in exact:10 over a first stage that keeps everything is exact.
    let (ok, out, err) = rewa(
        &[
            "eval",
            "--base",
            "s/base.npy",
            "--queries",
            "s/queries_same.npy",
            "--pipeline",
            "hadamard64+sign:300,exact:10",
            "--json",
        ],
        d,
    );
    assert!(ok, "{err}");
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["recall_at_k"], 1.0);
}

#[test]
fn bad_inputs_fail_with_messages() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    assert!(
        rewa(
            &[
                "synth",
                "--classes",
                "3",
                "--per-class",
                "5",
                "--dim",
                "8",
                "--out",
                "a"
            ],
            d
        )
        .0
    );
    assert!(
        rewa(
            &[
                "synth",
                "--classes",
                "3",
                "--per-class",
                "5",
                "--dim",
                "9",
                "--out",
                "b"
            ],
            d
        )
        .0
    );
    let (ok, _, err) = rewa(
        &[
            "eval",
            "--base",
            "a/base.npy",
            "--queries",
            "b/queries_same.npy",
            "--encoder",
            "flat",
        ],
        d,
    );
    assert!(!ok && err.contains("dimension"), "{err}");
    let (ok, _, err) = rewa(
        &[
            "eval",
            "--base",
            "a/base.npy",
            "--queries",
            "a/queries_same.npy",
            "--encoder",
            "bogus",
        ],
        d,
    );
    assert!(!ok && err.contains("unknown token"), "{err}");
    let (ok, _, err) = rewa(
        &[
            "eval",
            "--base",
            "a/nope.npy",
            "--queries",
            "a/queries_same.npy",
            "--encoder",
            "flat",
        ],
        d,
    );
    assert!(!ok && err.contains("nope.npy"), "{err}");
    let (ok, _, err) = rewa(
        &[
            "eval",
            "--base",
            "a/base.npy",
            "--queries",
            "a/queries_same.npy",
            "--pipeline",
            "sign:5,exact:3",
        ],
        d,
    );
    assert!(!ok && err.contains("fewer than k"), "{err}");
}

#[test]
fn build_search_info_tune() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    assert!(
        rewa(
            &[
                "synth",
                "--classes",
                "20",
                "--per-class",
                "50",
                "--dim",
                "32",
                "--new-classes",
                "0",
                "--out",
                "s"
            ],
            d
        )
        .0
    );
    let (ok, out, err) = rewa(
        &[
            "build",
            "--base",
            "s/base.npy",
            "--pipeline",
            "hadamard64+sign:500,exact:10",
            "--out",
            "idx",
            "--json",
        ],
        d,
    );
    assert!(ok, "{err}");
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["count"], 1000);
    let (ok, out, err) = rewa(&["info", "--index", "idx", "--json"], d);
    assert!(ok, "{err}");
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (
            j["count"].as_u64(),
            j["dim"].as_u64(),
            j["format_version"].as_u64()
        ),
        (Some(1000), Some(32), Some(1))
    );
    assert_eq!(j["metric"], "cosine");
    assert_eq!(j["bytes_per_vector"], 8 + 128);
    let (ok, out, err) = rewa(
        &[
            "search",
            "--index",
            "idx",
            "--queries",
            "s/queries_same.npy",
            "--out",
            "hits.tsv",
            "--json",
        ],
        d,
    );
    assert!(ok, "{err}");
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["n_queries"], 200);
    let tsv = std::fs::read_to_string(d.join("hits.tsv")).unwrap();
    assert_eq!(tsv.lines().count(), 1 + 200 * 10);
    // Tune on validation queries: the stored default must measure at least the target.
    let (ok, out, err) = rewa(
        &[
            "tune",
            "--index",
            "idx",
            "--queries",
            "s/queries_same.npy",
            "--target-recall",
            "0.9",
            "--json",
        ],
        d,
    );
    assert!(ok, "{err}");
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(j["recall_at_k"].as_f64().unwrap() >= 0.9, "{j}");
    let chosen = j["pipeline"].as_str().unwrap().to_string();
    let (_, out, _) = rewa(&["info", "--index", "idx", "--json"], d);
    let info: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(info["pipeline"], chosen.as_str());
    // Re-measure the chosen pipeline independently with eval against exact search.
    let (ok, out, err) = rewa(
        &[
            "eval",
            "--base",
            "s/base.npy",
            "--queries",
            "s/queries_same.npy",
            "--pipeline",
            &chosen,
            "--seed",
            "42",
            "--json",
        ],
        d,
    );
    assert!(ok, "{err}");
    let e: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(e["recall_at_k"].as_f64().unwrap() >= 0.9, "{e}");
    // Wrong query dimension is refused with a message.
    assert!(
        rewa(
            &[
                "synth",
                "--classes",
                "2",
                "--per-class",
                "5",
                "--dim",
                "31",
                "--out",
                "w"
            ],
            d
        )
        .0
    );
    let (ok, _, err) = rewa(
        &[
            "search",
            "--index",
            "idx",
            "--queries",
            "w/queries_same.npy",
        ],
        d,
    );
    assert!(!ok && err.contains("dimension"), "{err}");
}
