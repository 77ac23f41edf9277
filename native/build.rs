//! Compiles the Cython modules into this extension.
//!
//! cython turns `cython/_protocol.pyx` (the event-loop protocol) and
//! `cython/_sqlite.pyx` (the store's native appender) into C, `cc` compiles
//! them against the target interpreter's headers, and the static library is
//! linked into the same shared object as the PyO3 module, which initialises
//! them as the submodules `bluewren._protocol` and `bluewren._sqlite`. The
//! protocol calls the engine through the C ABI in `include/bluewren.h`,
//! implemented by `src/cabi.rs`; the appender calls the system's SQLite
//! library, the one the standard library's `sqlite3` module links.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

fn python() -> String {
    // maturin passes the interpreter it builds for; plain cargo falls back to PATH.
    env::var("PYO3_PYTHON")
        .or_else(|_| env::var("PYTHON_SYS_EXECUTABLE"))
        .unwrap_or_else(|_| "python3".to_owned())
}

fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{what} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
    let py = python();
    let include = run(
        Command::new(&py).args([
            "-c",
            "import sysconfig; print(sysconfig.get_paths()['include'])",
        ]),
        "locating the Python headers",
    );

    let modules = [
        ("_protocol", "bluewren._protocol"),
        ("_sqlite", "bluewren._sqlite"),
    ];
    let mut build = cc::Build::new();
    for (stem, qualified) in modules {
        let pyx = manifest.join("cython").join(format!("{stem}.pyx"));
        let c_file = out_dir.join(format!("{stem}.c"));
        run(
            Command::new(&py)
                .args([
                    "-m",
                    "cython",
                    "-3",
                    "--fast-fail",
                    "--module-name",
                    qualified,
                ])
                .arg("-I")
                .arg(manifest.join("cython"))
                .arg("-o")
                .arg(&c_file)
                .arg(&pyx),
            "cython (install it with `pip install cython`)",
        );
        build.file(&c_file);
        println!("cargo:rerun-if-changed={}", pyx.display());
    }
    for entry in std::fs::read_dir(manifest.join("cython")).expect("native/cython") {
        println!(
            "cargo:rerun-if-changed={}",
            entry.expect("dir entry").path().display()
        );
    }
    println!(
        "cargo:rerun-if-changed={}",
        Path::new("include/bluewren.h").display()
    );
    println!("cargo:rerun-if-env-changed=PYO3_PYTHON");

    build
        .include(&include)
        .include(manifest.join("include"))
        .opt_level(3)
        .warnings(false)
        .compile("bluewren_cython");
    // Shared, never bundled: one copy of SQLite per process (see cython/_sqlite.pyx).
    println!("cargo:rustc-link-lib=dylib=sqlite3");
}
