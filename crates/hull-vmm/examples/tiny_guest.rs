//! Writes the tiny PVH guest that prints `!` and triple-faults, for `bench/vmm`:
//! `cargo run --release -p hull-vmm --example tiny_guest -- OUT`.

fn main() {
    let Some(out) = std::env::args_os().nth(1) else {
        eprintln!("usage: tiny_guest OUT");
        std::process::exit(2);
    };
    let elf = hull_vmm::tiny::pvh_elf(hull_vmm::tiny::PVH_BANG_AND_TRIPLE_FAULT);
    if let Err(e) = std::fs::write(&out, elf) {
        eprintln!("tiny_guest: cannot write {}: {e}", out.to_string_lossy());
        std::process::exit(1);
    }
}
