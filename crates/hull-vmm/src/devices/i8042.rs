//! The i8042 keyboard controller, as much of it as a micro-VM needs: the reset line (a
//! guest without ACPI reboots, Linux's `reboot=k`, by writing 0xFE to the command port)
//! and a keyboard that can only say Ctrl-Alt-Del, which is how hull-vmm asks a guest to
//! shut down on SIGTERM (Linux turns it into SIGINT for init, or a reboot). Enough of
//! the controller's commands answer for Linux's i8042 and atkbd drivers to probe it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::EventFd;

use super::bus::PioDevice;

pub const BASE: u16 = 0x60;
/// 0x60 (data) to 0x64 (status/command).
pub const PORTS: u16 = 5;
const COMMAND: u16 = 4;
const DATA: u16 = 0;

const STATUS_OUTPUT_FULL: u8 = 1;
const STATUS_SYSTEM: u8 = 1 << 2;
const STATUS_LAST_WAS_COMMAND: u8 = 1 << 3;
/// Command byte: keyboard interrupt on, system flag, scancode translation to set 1.
const CTR_KBD_INTERRUPT: u8 = 1;
const CTR_TRANSLATE: u8 = 1 << 6;
const CTR_DEFAULT: u8 = CTR_KBD_INTERRUPT | 1 << 2 | CTR_TRANSLATE;

const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_KBD_TEST: u8 = 0xab;
const CMD_READ_OUTPUT_PORT: u8 = 0xd0;
const CMD_WRITE_OUTPUT_PORT: u8 = 0xd1;
const CMD_WRITE_KBD_BUFFER: u8 = 0xd2;
const CMD_WRITE_AUX_BUFFER: u8 = 0xd3;
const CMD_WRITE_AUX: u8 = 0xd4;
const PULSE_RESET: u8 = 0xfe;

const KBD_ACK: u8 = 0xfa;
const KBD_RESET: u8 = 0xff;
const KBD_GET_ID: u8 = 0xf2;
/// Keyboard commands that take one argument byte, which is acknowledged too.
const KBD_WITH_ARGUMENT: [u8; 3] = [0xed, 0xf0, 0xf3];

/// Ctrl, Alt, Delete pressed then released, in scancode set 1 (what the guest reads
/// with translation on) and set 2 (without).
const CAD_SET1: &[u8] = &[0x1d, 0x38, 0xe0, 0x53, 0xe0, 0xd3, 0xb8, 0x9d];
const CAD_SET2: &[u8] = &[
    0x14, 0x11, 0xe0, 0x71, 0xe0, 0xf0, 0x71, 0xf0, 0x11, 0xf0, 0x14,
];
/// A guest that never reads its keyboard cannot make hull-vmm buffer without bound.
const OUTPUT_MAX: usize = 32;

struct State {
    output: VecDeque<u8>,
    ctr: u8,
    /// A controller command waiting for its data byte on port 0x60.
    pending: Option<u8>,
    /// A keyboard command waiting for its argument byte.
    kbd_argument: bool,
    last_was_command: bool,
    last_read: u8,
}

/// The controller as the port bus sees it.
pub struct I8042 {
    state: Arc<Mutex<State>>,
    reset: Arc<AtomicBool>,
    irq: Option<Arc<EventFd>>,
}

/// What the VMM thread holds to type Ctrl-Alt-Del.
#[derive(Clone)]
pub struct Keyboard {
    state: Arc<Mutex<State>>,
    irq: Option<Arc<EventFd>>,
}

impl I8042 {
    /// `reset` is raised when the guest pulls the reset line; `irq` (KVM_IRQFD on
    /// IRQ 1) is signalled when the keyboard has bytes for a guest that wants them.
    pub fn new(reset: Arc<AtomicBool>, irq: Option<EventFd>) -> (I8042, Keyboard) {
        let state = Arc::new(Mutex::new(State {
            output: VecDeque::new(),
            ctr: CTR_DEFAULT,
            pending: None,
            kbd_argument: false,
            last_was_command: false,
            last_read: 0,
        }));
        let irq = irq.map(Arc::new);
        let keyboard = Keyboard {
            state: state.clone(),
            irq: irq.clone(),
        };
        (I8042 { state, reset, irq }, keyboard)
    }
}

impl State {
    fn push(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.output.len() < OUTPUT_MAX {
                self.output.push_back(b);
            }
        }
    }
}

fn lock(m: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn interrupt(state: &State, irq: &Option<Arc<EventFd>>) {
    if state.ctr & CTR_KBD_INTERRUPT != 0 && !state.output.is_empty() {
        if let Some(fd) = irq {
            let _ = fd.write(1);
        }
    }
}

impl Keyboard {
    /// Types Ctrl-Alt-Del, in the scancode set the guest asked the controller for.
    pub fn ctrl_alt_del(&self) {
        let mut s = lock(&self.state);
        let codes = if s.ctr & CTR_TRANSLATE != 0 {
            CAD_SET1
        } else {
            CAD_SET2
        };
        s.push(codes);
        interrupt(&s, &self.irq);
    }
}

impl PioDevice for I8042 {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        data.fill(0);
        let mut s = lock(&self.state);
        let value = match offset {
            COMMAND => {
                let mut status = STATUS_SYSTEM;
                if !s.output.is_empty() {
                    status |= STATUS_OUTPUT_FULL;
                }
                if s.last_was_command {
                    status |= STATUS_LAST_WAS_COMMAND;
                }
                status
            }
            DATA => {
                // Reading an empty buffer returns the last byte again, as hardware does.
                if let Some(b) = s.output.pop_front() {
                    s.last_read = b;
                }
                let b = s.last_read;
                interrupt(&s, &self.irq);
                b
            }
            _ => 0,
        };
        if let Some(first) = data.first_mut() {
            *first = value;
        }
    }

    fn write(&mut self, offset: u16, data: &[u8]) {
        let Some(&byte) = data.first() else {
            return;
        };
        let mut s = lock(&self.state);
        match offset {
            COMMAND => {
                s.last_was_command = true;
                match byte {
                    PULSE_RESET => self.reset.store(true, Ordering::SeqCst),
                    CMD_READ_CTR => {
                        let ctr = s.ctr;
                        s.push(&[ctr]);
                    }
                    CMD_SELF_TEST => s.push(&[0x55]),
                    CMD_KBD_TEST => s.push(&[0x00]),
                    // Output port: reset line high (not in reset), A20 on.
                    CMD_READ_OUTPUT_PORT => s.push(&[0x03]),
                    CMD_WRITE_CTR
                    | CMD_WRITE_OUTPUT_PORT
                    | CMD_WRITE_KBD_BUFFER
                    | CMD_WRITE_AUX_BUFFER
                    | CMD_WRITE_AUX => s.pending = Some(byte),
                    // Enabling or disabling the keyboard or the (absent) mouse, and
                    // anything else: nothing to do, nothing to answer.
                    _ => {}
                }
            }
            DATA => {
                s.last_was_command = false;
                match s.pending.take() {
                    Some(CMD_WRITE_CTR) => s.ctr = byte,
                    Some(CMD_WRITE_OUTPUT_PORT) if byte & 1 == 0 => {
                        self.reset.store(true, Ordering::SeqCst)
                    }
                    Some(CMD_WRITE_OUTPUT_PORT) => {}
                    Some(CMD_WRITE_KBD_BUFFER) => s.push(&[byte]),
                    // No mouse: nothing answers on the auxiliary port.
                    Some(_) => {}
                    None if s.kbd_argument => {
                        s.kbd_argument = false;
                        s.push(&[KBD_ACK]);
                    }
                    None => match byte {
                        KBD_RESET => s.push(&[KBD_ACK, 0xaa]),
                        KBD_GET_ID => s.push(&[KBD_ACK, 0xab, 0x83]),
                        b if KBD_WITH_ARGUMENT.contains(&b) => {
                            s.kbd_argument = true;
                            s.push(&[KBD_ACK]);
                        }
                        _ => s.push(&[KBD_ACK]),
                    },
                }
                interrupt(&s, &self.irq);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(dev: &mut I8042, port: u16, b: u8) {
        dev.write(port, &[b]);
    }

    fn read_all(dev: &mut I8042) -> Vec<u8> {
        let mut v = Vec::new();
        let mut b = [0u8];
        loop {
            dev.read(COMMAND, &mut b);
            if b[0] & STATUS_OUTPUT_FULL == 0 {
                return v;
            }
            dev.read(DATA, &mut b);
            v.push(b[0]);
        }
    }

    #[test]
    fn answers_the_probe_linux_makes() {
        let reset = Arc::new(AtomicBool::new(false));
        let (mut dev, _) = I8042::new(reset.clone(), None);
        out(&mut dev, COMMAND, CMD_SELF_TEST);
        assert_eq!(read_all(&mut dev), [0x55]);
        out(&mut dev, COMMAND, CMD_READ_CTR);
        assert_eq!(read_all(&mut dev), [CTR_DEFAULT]);
        out(&mut dev, COMMAND, CMD_WRITE_CTR);
        out(&mut dev, DATA, 0x45);
        out(&mut dev, COMMAND, CMD_READ_CTR);
        assert_eq!(read_all(&mut dev), [0x45]);
        out(&mut dev, DATA, KBD_GET_ID);
        assert_eq!(read_all(&mut dev), [KBD_ACK, 0xab, 0x83]);
        out(&mut dev, DATA, 0xed); // LEDs, then their argument
        out(&mut dev, DATA, 0x07);
        assert_eq!(read_all(&mut dev), [KBD_ACK, KBD_ACK]);
        assert!(!reset.load(Ordering::SeqCst));
        out(&mut dev, COMMAND, PULSE_RESET);
        assert!(reset.load(Ordering::SeqCst));
    }

    #[test]
    fn ctrl_alt_del_comes_in_the_set_the_guest_chose_and_raises_irq_1() {
        let irq = EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).unwrap();
        let probe = irq.try_clone().unwrap();
        let (mut dev, kbd) = I8042::new(Arc::default(), Some(irq));
        kbd.ctrl_alt_del();
        assert!(probe.read().unwrap() >= 1);
        assert_eq!(read_all(&mut dev), CAD_SET1);
        out(&mut dev, COMMAND, CMD_WRITE_CTR);
        out(&mut dev, DATA, CTR_DEFAULT & !CTR_TRANSLATE);
        let _ = probe.read();
        kbd.ctrl_alt_del();
        assert_eq!(read_all(&mut dev), CAD_SET2);
        // A guest that never reads cannot grow the buffer.
        for _ in 0..100 {
            kbd.ctrl_alt_del();
        }
        assert_eq!(read_all(&mut dev).len(), OUTPUT_MAX);
    }
}
