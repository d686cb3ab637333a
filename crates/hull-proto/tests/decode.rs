//! Whatever bytes arrive, the decoder returns frames or an error: no panic, and no
//! allocation beyond what was received plus one header's bound.

use hull_proto::{encode_frame, encode_message, FrameDecoder, Message, ProcessIo, Request};
use proptest::prelude::*;

fn drain(d: &mut FrameDecoder) -> Result<usize, ()> {
    let mut n = 0;
    loop {
        match d.next_frame() {
            Ok(Some(f)) => {
                // Decoding a control message must not panic either.
                let _ = f.message();
                n += 1;
            }
            Ok(None) => return Ok(n),
            Err(_) => return Err(()),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096),
                                   split in 1usize..64) {
        let mut d = FrameDecoder::new();
        for chunk in bytes.chunks(split) {
            d.push(chunk);
            if drain(&mut d).is_err() {
                break;
            }
            prop_assert!(d.pending() <= bytes.len());
        }
    }

    #[test]
    fn arbitrary_control_payloads_decode_or_fail(payload in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut wire = Vec::new();
        encode_frame(0, &payload, &mut wire);
        let mut d = FrameDecoder::new();
        d.push(&wire);
        let f = d.next_frame().unwrap().unwrap();
        let _ = f.message();
    }

    #[test]
    fn messages_round_trip(id in any::<u64>(), name in "[a-z0-9-]{1,20}", cfg in ".{0,200}",
                           stdin in proptest::option::of(1u32..100), terminal in any::<bool>()) {
        let m = Message::Request {
            id,
            request: Request::CreateContainer {
                id: name.clone(),
                config: cfg,
                rootfs: hull_proto::Rootfs::disk(&name),
                io: ProcessIo { stdin, stdout: Some(200), stderr: None, terminal, extra: vec![] },
                files: vec![],
                shares: vec![],
            },
        };
        let mut wire = Vec::new();
        encode_message(&m, &mut wire);
        let mut d = FrameDecoder::new();
        d.push(&wire);
        prop_assert_eq!(d.next_frame().unwrap().unwrap().message().unwrap(), m);
    }

    #[test]
    fn mutated_messages_never_panic(pos in 0usize..200, byte in any::<u8>()) {
        let m = Message::Request { id: 1, request: Request::Wait { container: "c1".into(), exec_id: Some("e".into()) } };
        let mut wire = Vec::new();
        encode_message(&m, &mut wire);
        let i = pos % wire.len();
        wire[i] = byte;
        let mut d = FrameDecoder::new();
        d.push(&wire);
        let _ = drain(&mut d);
    }
}
