//! Tiny guests of plain real-mode instructions, run on this host's KVM: they take
//! milliseconds even where KVM emulates every guest instruction (~0.7 µs each here).

use std::io::Write;
use std::sync::{Arc, Mutex};

use hull_vmm::devices::bus::{Buses, MmioBus, PioBus};
use hull_vmm::devices::serial::{SerialDevice, COM1, PORTS};
use hull_vmm::vstate::vcpu::{Stopped, Vcpu};
use hull_vmm::vstate::{memory, vm::Vm};
use hull_vmm::VmmError;
use vm_memory::{Bytes, GuestAddress};

const ENTRY: u16 = 0x1000;

/// What the guest wrote to its serial port.
#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn run(code: &[(u64, &[u8])]) -> (Result<Stopped, VmmError>, Vec<u8>) {
    assert!(
        std::path::Path::new("/dev/kvm").exists(),
        "these tests run guests on KVM: /dev/kvm is missing on this host"
    );
    let mem = memory::anonymous(1 << 20).unwrap();
    for (addr, bytes) in code {
        mem.write_slice(bytes, GuestAddress(*addr)).unwrap();
    }
    let vm = Vm::new(mem).unwrap();
    let mut vcpu = Vcpu::new(&vm, 0).unwrap();
    vcpu.set_real_mode(ENTRY).unwrap();
    let sink = Sink::default();
    let mut bus = PioBus::new();
    bus.insert(COM1, PORTS, Box::new(SerialDevice::new(sink.clone())));
    let r = vcpu.run(&Buses::new(bus, MmioBus::new()), &vm.memory);
    let out = sink.0.lock().unwrap().clone();
    (r, out)
}

#[test]
fn writes_to_the_serial_port_and_halts() {
    let code: &[u8] = &[
        0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xb0, b'H', 0xee, // mov al, 'H'; out dx, al
        0xb0, b'i', 0xee, // mov al, 'i'; out dx, al
        0xf4, // hlt
    ];
    let (r, out) = run(&[(ENTRY.into(), code)]);
    assert_eq!(r.unwrap(), Stopped::Halted);
    assert_eq!(out, b"Hi");
}

#[test]
fn reads_the_line_status_register() {
    let code: &[u8] = &[
        0xba, 0xfd, 0x03, // mov dx, 0x3fd (LSR)
        0xec, // in al, dx
        0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xee, // out dx, al
        0xba, 0x00, 0x05, // mov dx, 0x500 (nobody's)
        0xec, // in al, dx: 0xff
        0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xee, // out dx, al
        0xf4, // hlt
    ];
    let (r, out) = run(&[(ENTRY.into(), code)]);
    assert_eq!(r.unwrap(), Stopped::Halted);
    // Transmitter empty and idle; an unclaimed port reads as all ones.
    assert_eq!(out, [0x60, 0xff]);
}

#[test]
fn an_instruction_kvm_cannot_emulate_is_named_not_hung_on() {
    // xrstor [bx] in real mode. Where KVM emulates guest code (this host) that
    // stops the VM with an emulation failure; on hardware it raises #UD, whose
    // handler (IVT entry 6 -> 0:0x2000) writes 'U' and halts.
    let xrstor: &[u8] = &[0x0f, 0xae, 0x2f];
    let ud_handler: &[u8] = &[0xba, 0xf8, 0x03, 0xb0, b'U', 0xee, 0xf4];
    let ivt_6: &[u8] = &[0x00, 0x20, 0x00, 0x00]; // offset 0x2000, segment 0
    let (r, out) = run(&[(ENTRY.into(), xrstor), (0x2000, ud_handler), (6 * 4, ivt_6)]);
    match r {
        Err(VmmError::EmulationFailure { rip, bytes }) => {
            assert_eq!(rip, u64::from(ENTRY));
            assert_eq!(&bytes[..3], xrstor);
            let msg = VmmError::EmulationFailure { rip, bytes }.to_string();
            assert!(msg.contains("0x1000") && msg.contains("0f ae 2f"), "{msg}");
            eprintln!("stopped as expected here: {msg}");
        }
        Ok(Stopped::Halted) => {
            assert_eq!(out, b"U");
            eprintln!("hardware KVM: #UD reached the guest's handler");
        }
        Ok(other) => panic!("unexpected stop: {other:?}"),
        Err(e) => panic!("unexpected: {e}"),
    }
}

#[test]
fn the_reset_line_ends_the_vm() {
    let mem = memory::anonymous(1 << 20).unwrap();
    // mov al, 0xfe; out 0x64, al; hlt (never reached)
    let code: &[u8] = &[0xb0, 0xfe, 0xe6, 0x64, 0xf4];
    mem.write_slice(code, GuestAddress(ENTRY.into())).unwrap();
    let vm = Vm::new(mem).unwrap();
    let mut vcpu = Vcpu::new(&vm, 0).unwrap();
    vcpu.set_real_mode(ENTRY).unwrap();
    let mut bus = PioBus::new();
    let reset = hull_vmm::devices::i8042::I8042::new(vcpu.reset_line(), None).0;
    bus.insert(
        hull_vmm::devices::i8042::BASE,
        hull_vmm::devices::i8042::PORTS,
        Box::new(reset),
    );
    assert_eq!(
        vcpu.run(&Buses::new(bus, MmioBus::new()), &vm.memory)
            .unwrap(),
        Stopped::Reset
    );
}

#[test]
fn a_guest_that_never_exits_is_stopped_by_a_kick() {
    let mem = memory::anonymous(1 << 20).unwrap();
    mem.write_slice(&[0xeb, 0xfe], GuestAddress(ENTRY.into()))
        .unwrap(); // jmp $
    let vm = Vm::new(mem).unwrap();
    let mut vcpu = Vcpu::new(&vm, 0).unwrap();
    vcpu.set_real_mode(ENTRY).unwrap();
    let kicker = vcpu.kicker();
    let t = std::thread::spawn(move || vcpu.run(&Buses::default(), &vm.memory));
    std::thread::sleep(std::time::Duration::from_millis(100));
    let started = std::time::Instant::now();
    kicker.kick();
    assert_eq!(t.join().unwrap().unwrap(), Stopped::Kicked);
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
}
