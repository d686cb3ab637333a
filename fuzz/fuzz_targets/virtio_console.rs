#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| (hull_fuzz::target("virtio_console").unwrap())(data));
