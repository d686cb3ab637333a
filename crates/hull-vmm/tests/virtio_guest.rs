//! Tiny guests that drive hull-vmm's virtio-mmio devices through their registers, as
//! Linux's drivers do, on this host's KVM. The guests are assembly in tests/guests/,
//! assembled here with binutils' `as` (scripts/install-deps installs it with gcc).

use std::path::{Path, PathBuf};
use std::process::Command;

use hull_vmm::config::{BlockConfig, SerialOut, VmConfig};
use hull_vmm::machine::{Machine, Outcome};

struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The flat binary of a guest in tests/guests/, wrapped as a PVH kernel.
fn guest(dir: &Path, name: &str) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/guests")
        .join(name);
    let obj = dir.join("guest.o");
    let bin = dir.join("guest.bin");
    let run = |cmd: &mut Command| {
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("{cmd:?}: {e} (binutils is needed: scripts/install-deps)"));
        assert!(
            out.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(Command::new("as").arg("--32").arg("-o").arg(&obj).arg(&src));
    run(Command::new("objcopy")
        .args(["-O", "binary"])
        .arg(&obj)
        .arg(&bin));
    let kernel = dir.join("kernel");
    let code = std::fs::read(&bin).unwrap();
    std::fs::write(&kernel, hull_vmm::tiny::pvh_elf(&code)).unwrap();
    kernel
}

#[test]
fn a_guest_reads_a_sector_through_virtio_blk() {
    let d = Dir(std::env::temp_dir().join(format!("hull-vmm-blk-{}", std::process::id())));
    std::fs::create_dir_all(&d.0).unwrap();
    let mut image = vec![0u8; 4 * 512];
    image[512..520].copy_from_slice(b"hull-vmm");
    std::fs::write(d.0.join("disk"), &image).unwrap();
    let config = VmConfig {
        kernel: guest(&d.0, "blk_read.S"),
        initramfs: None,
        cmdline: "hull.test".into(),
        vcpus: 1,
        memory_mib: 16,
        memory_backend: Default::default(),
        hugepages: Default::default(),
        serial: SerialOut::File(d.0.join("serial")),
        block: vec![BlockConfig {
            path: d.0.join("disk"),
            read_only: true,
            serial: "disk0".into(),
        }],
        rng: true,
        seccomp: true,
    };
    let machine = Machine::build(&config).unwrap();
    assert_eq!(
        machine.cmdline,
        "hull.test virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6"
    );
    assert_eq!(machine.run().unwrap(), Outcome::Reset);
    // Status 0 (VIRTIO_BLK_S_OK), then the sector's first bytes.
    assert_eq!(
        std::fs::read_to_string(d.0.join("serial")).unwrap(),
        "0hull-vmm"
    );
}
