//! Two link options that keep a container start's RSS down (measured with `hull run`
//! of busybox `true`, max of 20: 3508 KiB without them, 3036 KiB with them; crun 3380):
//! - the VM code (hull-vmm, hull-sandbox and the rust-vmm crates) in a block of its own
//!   (vm-code.ld): a start touches nearly every 64 KiB window of the runtime's code,
//!   fault-around maps each touched window whole, and VM code interleaved with the
//!   runtime's rode along;
//! - RELR relocations (`-z pack-relative-relocs`, binutils 2.38, glibc 2.36): the
//!   static-pie start-up relocates itself, and reading 296 KiB of RELA entries for it
//!   was RSS; the RELR table is 4 KiB. hull stays position-independent (ASLR).

fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let script = format!("{dir}/vm-code.ld");
    println!("cargo:rerun-if-changed={script}");
    println!("cargo:rustc-link-arg-bins=-Wl,-T,{script}");
    println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
}
