// Running the `rewa` binary from tests.

use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};

/// Runs `rewa` with `args` in `dir`.
pub fn run(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rewa"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

/// Runs `args` (for paths with spaces), which must succeed; stdout.
pub fn ok_args(args: &[&str], dir: &Path) -> String {
    let out = run(args, dir);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into()
}

/// Runs `cmd`, which must be refused as an error, not a panic or an abort: exit code 1, a
/// message starting `error:` that holds `needle`.
pub fn refused(cmd: &str, dir: &Path, needle: &str) {
    let args: Vec<&str> = cmd.split_whitespace().collect();
    let out = run(&args, dir);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{cmd}: {err}");
    let msg = err
        .lines()
        .find(|l| !l.starts_with("[rewa]"))
        .unwrap_or_default();
    assert!(msg.starts_with("error:"), "{cmd}: {err}");
    assert!(!err.contains("panicked"), "{cmd}: {err}");
    assert!(err.contains(needle), "{cmd}: wanted {needle:?} in {err}");
}

/// Runs `rewa` with `args` in `dir`: (success, stdout, stderr).
pub fn rewa_args(args: &[&str], dir: &Path) -> (bool, String, String) {
    let out = run(args, dir);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// Runs `rewa` with the whitespace-separated arguments of `cmd` in `dir`.
pub fn rewa(cmd: &str, dir: &Path) -> (bool, String, String) {
    rewa_args(&cmd.split_whitespace().collect::<Vec<_>>(), dir)
}

/// Runs `cmd`, which must succeed.
pub fn ok(cmd: &str, dir: &Path) -> String {
    let (ok, out, err) = rewa(cmd, dir);
    assert!(ok, "{cmd}: {err}");
    out
}

/// Runs `cmd --json`, which must succeed and print exactly one JSON object.
pub fn json(cmd: &str, dir: &Path) -> Value {
    let out = ok(&format!("{cmd} --json"), dir);
    assert_eq!(
        out.lines().count(),
        1,
        "stdout must hold exactly one JSON object: {out}"
    );
    serde_json::from_str(&out).unwrap()
}

/// Runs `cmd`, which must fail cleanly (exit code 1, an `error:` line, no panic) with
/// `needle` in its message; returns stderr.
pub fn fails(cmd: &str, dir: &Path, needle: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_rewa"))
        .args(cmd.split_whitespace())
        .current_dir(dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "{cmd} succeeded");
    assert!(!err.contains("panicked"), "{cmd} panicked: {err}");
    if out.status.code() != Some(2) {
        // clap's usage errors exit 2; everything else is ours
        assert_eq!(out.status.code(), Some(1), "{cmd}: {err}");
        assert!(err.contains("error:"), "{cmd}: {err}");
    }
    assert!(err.contains(needle), "{cmd}: wanted {needle:?} in {err}");
    err
}
