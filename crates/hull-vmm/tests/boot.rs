//! The boot path end to end with tiny kernels: hull-vmm loads a PVH ELF or a bzImage,
//! builds the entry state, and the guest's own code reads back what it was given.

use std::path::{Path, PathBuf};

use hull_vmm::config::{Backend, HugePages, SerialOut, VmConfig};
use hull_vmm::machine::{Machine, Outcome};
use hull_vmm::tiny;
use hull_vmm::VmmError;

struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("hull-vmm-boot-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn config(dir: &Path, kernel: &[u8], cmdline: &str, vcpus: u8) -> VmConfig {
    assert!(
        Path::new("/dev/kvm").exists(),
        "these tests run guests on KVM: /dev/kvm is missing on this host"
    );
    std::fs::write(dir.join("kernel"), kernel).unwrap();
    VmConfig {
        kernel: dir.join("kernel"),
        initramfs: None,
        cmdline: cmdline.into(),
        vcpus,
        memory_mib: 16,
        memory_backend: Default::default(),
        hugepages: Default::default(),
        serial: SerialOut::File(dir.join("serial")),
        block: vec![],
        rng: false,
        vsock: None,
        console: None,
        net: Vec::new(),
        free_page_reporting: false,
        shutdown_grace_ms: 3000,
        deferred_teardown: false,
        seccomp: true,
        jail: None,
    }
}

fn boot(dir: &Path, config: &VmConfig) -> (Result<Outcome, VmmError>, String) {
    let r = Machine::build(config).and_then(Machine::run);
    let out = std::fs::read_to_string(dir.join("serial")).unwrap_or_default();
    (r, out)
}

#[test]
fn a_pvh_kernel_reads_its_command_line_from_the_start_info() {
    let d = Dir::new("pvh");
    for vcpus in [1, 2] {
        let c = config(
            &d.0,
            &tiny::pvh_elf(tiny::PVH_PRINT_CMDLINE),
            "hello from hull-vmm",
            vcpus,
        );
        let (r, out) = boot(&d.0, &c);
        assert_eq!(r.unwrap(), Outcome::Reset, "{vcpus} vCPUs");
        assert_eq!(out, "hello from hull-vmm");
    }
}

#[test]
fn a_bzimage_enters_in_long_mode_with_the_zero_page() {
    let d = Dir::new("bz");
    let c = config(
        &d.0,
        &tiny::bzimage(tiny::LINUX64_PRINT_CMDLINE),
        "console=ttyS0 via the zero page",
        1,
    );
    let (r, out) = boot(&d.0, &c);
    assert_eq!(r.unwrap(), Outcome::Reset);
    assert_eq!(out, "console=ttyS0 via the zero page");
}

#[test]
fn the_initramfs_lands_page_aligned_at_the_top_of_memory() {
    let d = Dir::new("initrd");
    let mut c = config(&d.0, &tiny::pvh_elf(tiny::PVH_BANG_AND_RESET), "", 1);
    std::fs::write(d.0.join("initrd"), vec![7u8; 5000]).unwrap();
    c.initramfs = Some(d.0.join("initrd"));
    let m = Machine::build(&c).unwrap();
    let (addr, size) = m.loaded.initramfs.unwrap();
    assert_eq!(size, 5000);
    assert_eq!(addr % 4096, 0);
    assert_eq!(addr, (16 << 20) - 8192);
    assert_eq!(m.run().unwrap(), Outcome::Reset);
    assert_eq!(std::fs::read(d.0.join("serial")).unwrap(), b"!");
}

#[test]
fn bad_kernels_and_initramfs_get_errors_that_name_them() {
    let d = Dir::new("bad");
    let err = |c: &VmConfig| match Machine::build(c) {
        Ok(_) => panic!("{:?} built", c.kernel),
        Err(e) => e.to_string(),
    };
    let c = config(&d.0, b"not a kernel at all, just some bytes", "", 1);
    let e = err(&c);
    assert!(
        e.contains("not a loadable kernel") && e.contains("kernel"),
        "{e}"
    );

    // An ELF without the PVH note: firmware would be needed to start it.
    let mut elf = tiny::pvh_elf(tiny::PVH_BANG_AND_RESET);
    elf[120..124].copy_from_slice(&6u32.to_le_bytes()); // 2nd header: PT_PHDR, not PT_NOTE
    let c = config(&d.0, &elf, "", 1);
    let e = err(&c);
    assert!(e.contains("no PVH entry note"), "{e}");

    let mut c = config(&d.0, &tiny::pvh_elf(tiny::PVH_BANG_AND_RESET), "", 1);
    c.initramfs = Some(d.0.join("missing"));
    let e = err(&c);
    assert!(e.contains("cannot read") && e.contains("missing"), "{e}");
    std::fs::write(d.0.join("big"), vec![0u8; 17 << 20]).unwrap();
    c.initramfs = Some(d.0.join("big"));
    let e = err(&c);
    assert!(e.contains("does not fit"), "{e}");

    c.initramfs = None;
    c.cmdline = "x".repeat(4096);
    let e = err(&c);
    assert!(e.contains("command line"), "{e}");
}

#[test]
fn a_triple_fault_is_a_reset() {
    let d = Dir::new("triple");
    let c = config(&d.0, &tiny::pvh_elf(tiny::PVH_BANG_AND_TRIPLE_FAULT), "", 1);
    let (r, out) = boot(&d.0, &c);
    assert_eq!(r.unwrap(), Outcome::Reset);
    assert_eq!(out, "!");
}

#[test]
fn memfd_and_transparent_huge_page_memory_boot_the_same_guest() {
    let d = Dir::new("memory");
    for (backend, huge) in [
        (Backend::Memfd, HugePages::None),
        (Backend::Anonymous, HugePages::Transparent),
        (Backend::Memfd, HugePages::Transparent),
    ] {
        let mut c = config(&d.0, &tiny::pvh_elf(tiny::PVH_PRINT_CMDLINE), "memory", 1);
        (c.memory_backend, c.hugepages) = (backend, huge);
        let (r, out) = boot(&d.0, &c);
        assert_eq!(r.unwrap(), Outcome::Reset, "{backend:?} {huge:?}");
        assert_eq!(out, "memory", "{backend:?} {huge:?}");
    }
}

#[test]
fn hugetlb_memory_boots_or_says_what_the_host_lacks() {
    let d = Dir::new("hugetlb");
    let mut c = config(&d.0, &tiny::pvh_elf(tiny::PVH_PRINT_CMDLINE), "2m", 1);
    c.hugepages = HugePages::Hugetlb2M;
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let free: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("HugePages_Free:"))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0);
    let needed = u64::from(c.memory_mib) / 2;
    eprintln!("host: {free} free 2 MiB huge pages, the VM needs {needed}");
    if free >= needed {
        let (r, out) = boot(&d.0, &c);
        assert_eq!(r.unwrap(), Outcome::Reset);
        assert_eq!(out, "2m");
    } else {
        let e = Machine::build(&c)
            .err()
            .expect("built without huge pages")
            .to_string();
        assert!(
            e.contains("nr_hugepages") && e.contains("2 MiB huge pages"),
            "{e}"
        );
    }
    c.memory_mib = 15;
    let e = Machine::build(&c)
        .err()
        .expect("an odd size built")
        .to_string();
    assert!(e.contains("not a multiple of 2 MiB"), "{e}");
}
