//! The virtio harness reaches the devices, not only the transport: the virtio-blk seed
//! (fuzz/seeds.py) brings the device up and has it write sector 2 of its image.

use std::path::Path;

#[test]
fn the_blk_seed_writes_through_the_device() {
    let seed =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/virtio_blk/seed-write-read");
    let data = std::fs::read(&seed).unwrap();
    hull_fuzz::target("virtio_blk").unwrap()(&data);
    let image = std::fs::read(hull_fuzz::scratch().join("disk.img")).unwrap();
    let _ = std::fs::remove_dir_all(hull_fuzz::scratch());
    // The image starts as 0x5a everywhere; the request wrote guest memory (zeros).
    assert!(
        image[..1024].iter().all(|&b| b == 0x5a),
        "sectors 0-1 untouched"
    );
    assert!(
        image[1024..1536].iter().all(|&b| b == 0),
        "sector 2 written"
    );
}
