//! Writes the seed inputs of every fuzz target to `corpus/<target>/seed-<name>`
//! (existing files of the same name are replaced, others kept).
//!
//! ```text
//! cargo run --example write_seeds
//! ```

use std::fs;
use std::path::Path;

use bluewren_engine_fuzz::decompress::Dictionaries;
use bluewren_engine_fuzz::seeds;

fn main() -> std::io::Result<()> {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let seeds = seeds::all(&Dictionaries::new());
    for seed in &seeds {
        let dir = corpus.join(seed.target);
        fs::create_dir_all(&dir)?;
        fs::write(dir.join(format!("seed-{}", seed.name)), &seed.bytes)?;
    }
    println!("wrote {} seeds under {}", seeds.len(), corpus.display());
    Ok(())
}
