//! A busybox rootfs, and a one-layer OCI image of a directory, made here and imported
//! with `ctr images import`: no registry, no network. Running it makes containerd's
//! overlayfs snapshotter hand the shim real rootfs mounts. (Shared with the CRI tests
//! of crates/hull-cri-tests.)

use std::fs;
use std::path::Path;
use std::process::Command;

use sha2::{Digest, Sha256};

fn blob(dir: &Path, data: &[u8]) -> (String, usize) {
    let hex: String = Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    fs::write(dir.join("blobs/sha256").join(&hex), data).unwrap();
    (format!("sha256:{hex}"), data.len())
}

/// Writes an OCI image archive of `rootfs` named `name`, running `cmd`, to `out`.
pub fn build(rootfs: &Path, name: &str, cmd: &[&str], out: &Path) {
    build_layers(&[rootfs], name, cmd, out)
}

/// The same with one layer per directory, bottom first (a layer's `.wh.NAME` file
/// deletes NAME of the layers below, as in any image).
pub fn build_layers(layers: &[&Path], name: &str, cmd: &[&str], out: &Path) {
    let layout = out.with_extension("d");
    fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
    let layer_tar = out.with_extension("layer");
    let mut diff_ids = Vec::new();
    let mut descriptors = Vec::new();
    for dir in layers {
        let st = Command::new("tar")
            .arg("-C")
            .arg(dir)
            .arg("-cf")
            .arg(&layer_tar)
            .arg(".")
            .status()
            .unwrap();
        assert!(st.success(), "tar the layer {}", dir.display());
        let (layer, layer_size) = blob(&layout, &fs::read(&layer_tar).unwrap());
        fs::remove_file(&layer_tar).unwrap();
        descriptors.push(serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer, "size": layer_size}));
        diff_ids.push(layer);
    }
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": cmd},
        "rootfs": {"type": "layers", "diff_ids": diff_ids}
    });
    let (config, config_size) = blob(&layout, config.to_string().as_bytes());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": config_size},
        "layers": descriptors
    });
    let (manifest, manifest_size) = blob(&layout, manifest.to_string().as_bytes());
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest, "size": manifest_size,
            "annotations": {"io.containerd.image.name": name}
        }]
    });
    fs::write(layout.join("index.json"), index.to_string()).unwrap();
    fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let st = Command::new("tar")
        .arg("-C")
        .arg(&layout)
        .arg("-cf")
        .arg(out)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success(), "tar the image");
    fs::remove_dir_all(&layout).unwrap();
}

/// A busybox rootfs: /bin/busybox and its applets, /etc/passwd, mount points.
pub fn make_busybox_rootfs(rootfs: &Path) {
    for d in ["bin", "etc", "tmp", "proc", "sys", "dev", "root"] {
        fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("busybox-static is installed (scripts/install-deps)");
    fs::copy(busybox, rootfs.join("bin/busybox")).unwrap();
    let list = Command::new(busybox).arg("--list").output().unwrap();
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if !applet.is_empty() && applet != "busybox" {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
        }
    }
    fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    fs::write(rootfs.join("etc/group"), "root:x:0:\ntty:x:5:\n").unwrap();
}
