//! Every kept fuzz input, fed again to its target: the corpus `bench/fuzz` built
//! (fuzz/corpus/<target>/) and every input that once crashed hull
//! (fuzz/regressions/<target>/, named after the bug). A target that panics fails the
//! test with the file's name.

use std::path::{Path, PathBuf};

fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    v.sort();
    v
}

fn replay(kind: &str, min: usize) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz")
        .join(kind);
    let mut total = 0;
    for (name, run) in hull_fuzz::TARGETS {
        let files = inputs(&root.join(name));
        for f in &files {
            let data = std::fs::read(f).unwrap();
            let r = std::panic::catch_unwind(|| run(&data));
            assert!(r.is_ok(), "{name}: {} panics", f.display());
        }
        println!("{name}: {} {kind} inputs replayed", files.len());
        total += files.len();
    }
    assert!(total >= min, "only {total} inputs under {}", root.display());
}

/// One test: the targets share this process's scratch directory, removed at the end.
#[test]
fn kept_inputs_replay_without_a_panic() {
    // Each target keeps at least its seeds.
    replay("corpus", hull_fuzz::TARGETS.len());
    replay("regressions", 0);
    let _ = std::fs::remove_dir_all(hull_fuzz::scratch());
}
