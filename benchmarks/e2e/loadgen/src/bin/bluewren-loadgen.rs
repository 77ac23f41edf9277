//! `bluewren-loadgen --plan plan.json --out result.json`: runs a plan (see
//! the crate README) and writes its result. Exit code 0 on success, 2 for a
//! bad plan or command line, 1 if the run failed.

use std::process::ExitCode;
use std::time::Instant;

use bluewren_loadgen::client;
use bluewren_loadgen::plan::Plan;

const USAGE: &str = "usage: bluewren-loadgen --plan PLAN.json --out RESULT.json";

fn main() -> ExitCode {
    let start = Instant::now();
    let mut args = std::env::args().skip(1);
    let (mut plan_path, mut out_path) = (None, None);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--plan" => plan_path = args.next(),
            "--out" => out_path = args.next(),
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!("bluewren-loadgen: unknown argument {other:?}\n{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    let (Some(plan_path), Some(out_path)) = (plan_path, out_path) else {
        eprintln!("bluewren-loadgen: --plan and --out are required\n{USAGE}");
        return ExitCode::from(2);
    };
    let text = match std::fs::read_to_string(&plan_path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("bluewren-loadgen: bad plan: cannot read {plan_path}: {e}");
            return ExitCode::from(2);
        }
    };
    let plan = match Plan::parse(&text) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("bluewren-loadgen: {e} ({plan_path})");
            return ExitCode::from(2);
        }
    };
    let outcome = match client::run(&plan, start, &mut std::io::stdout()) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("bluewren-loadgen: run failed: {e}");
            return ExitCode::from(1);
        }
    };
    let json = match serde_json::to_string_pretty(&outcome.result) {
        Ok(j) => j,
        Err(e) => {
            eprintln!("bluewren-loadgen: cannot encode the result: {e}");
            return ExitCode::from(1);
        }
    };
    if let Err(e) = std::fs::write(&out_path, json + "\n") {
        eprintln!("bluewren-loadgen: cannot write {out_path}: {e}");
        return ExitCode::from(1);
    }
    match outcome.failure {
        None => ExitCode::SUCCESS,
        Some(why) => {
            eprintln!("bluewren-loadgen: run failed: {why}");
            ExitCode::from(1)
        }
    }
}
