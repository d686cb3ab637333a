//! Prints the size of each thread role's seccomp allowlist, for `bench/vmm`:
//! `cargo run --release -p hull-vmm --example allowlists`.

fn main() {
    println!("vcpu {}", hull_vmm::seccomp::VCPU.len());
    println!("vmm {}", hull_vmm::seccomp::VMM.len());
    println!("main {}", hull_vmm::seccomp::MAIN.len());
}
