//! Helpers shared by the integration tests: writing a plan, starting the
//! loadgen on it and reading its result.

#![allow(dead_code)] // each test crate uses a subset

use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::Value;

pub const LOADGEN: &str = env!("CARGO_BIN_EXE_bluewren-loadgen");

/// A path for `name` in this test process's scratch directory.
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("bluewren-loadgen-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// Writes `plan` as `<name>.plan.json` and returns the loadgen command for it
/// (stdin, stdout and stderr still to choose) and the result's path (any
/// previous result removed).
pub fn loadgen(name: &str, plan: &Value) -> (Command, PathBuf) {
    let plan_path = scratch(&format!("{name}.plan.json"));
    let out_path = scratch(&format!("{name}.result.json"));
    std::fs::write(&plan_path, plan.to_string()).unwrap();
    let _ = std::fs::remove_file(&out_path);
    let mut cmd = Command::new(LOADGEN);
    cmd.arg("--plan")
        .arg(&plan_path)
        .arg("--out")
        .arg(&out_path);
    (cmd, out_path)
}

/// The result JSON at `path`, or Null if there is none.
pub fn read_result(path: &PathBuf) -> Value {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null)
}

/// Runs the loadgen on `plan` (stdin closed); returns (exit code, result
/// JSON or Null, stderr).
pub fn run_plan(name: &str, plan: &Value) -> (i32, Value, String) {
    let (mut cmd, out_path) = loadgen(name, plan);
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (
        out.status.code().unwrap_or(-1),
        read_result(&out_path),
        stderr,
    )
}
