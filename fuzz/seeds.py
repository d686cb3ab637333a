#!/usr/bin/env python3
"""Writes the seed inputs of every target into fuzz/corpus/<target>/seed-*: real
config.json and state.json shapes, hull-proto conversations, and short virtio driver
programs. Usage: fuzz/seeds.py DEFAULT_CONFIG_JSON (the output of `hull spec`)."""
import json, os, struct, sys

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")

def put(target, name, data):
    d = os.path.join(root, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())

spec = json.load(open(sys.argv[1]))
put("config", "default", json.dumps(spec, indent=2))
vm = json.loads(json.dumps(spec))
vm.setdefault("annotations", {})["io.hull.isolation"] = "vm"
vm["hostname"] = "c1"
vm["mounts"].append({"destination": "/data", "type": "bind", "source": "/tmp", "options": ["rbind", "ro"]})
vm["linux"]["namespaces"].append({"type": "network", "path": "/run/netns/x"})
vm["linux"]["uidMappings"] = [{"containerID": 0, "hostID": 1000, "size": 1}]
vm["process"]["user"] = {"uid": -1, "gid": 0}
put("config", "vm-bad", json.dumps(vm))
put("config", "minimal", '{"ociVersion":"1.0.2","root":{"path":"rootfs"},"process":{"args":["sh"],"cwd":"/"}}')

hier = lambda c, m: {"controllers": c, "mount": m, "dir": m + "/hull/c1", "path": "/hull/c1", "created": [m + "/hull", m + "/hull/c1"]}
state = {"id": "c1", "pid": 4242, "start_time": 123456, "bundle": "/b", "rootfs": "/b/rootfs",
         "created": "2025-01-01T00:00:00.000000000Z", "owner": "", "creator": [4000, 1200], "started": True,
         "cgroup": {"version": "hybrid", "v1": [hier("memory", "/sys/fs/cgroup/memory"), hier("cpu,cpuacct", "/sys/fs/cgroup/cpu,cpuacct")],
                    "unified": hier("", "/sys/fs/cgroup/unified")},
         "config": spec, "isolation": "vm"}
put("state", "vm", json.dumps(state))
state["isolation"] = "namespace"; del state["creator"]; state["cgroup"] = {"version": "v2", "unified": hier("", "/sys/fs/cgroup")}
put("state", "namespace", json.dumps(state))

def frame(stream, payload):
    payload = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return struct.pack(">II", stream, len(payload)) + payload

hello = {"type": "hello", "version": 3, "software": "hull-agent 0.1.0"}
put("proto_host", "conversation", frame(0, hello)
    + frame(0, {"type": "response", "id": 1, "reply": {"Ok": {"kind": "process", "pid": 7}}})
    + frame(0, {"type": "response", "id": 2, "reply": {"Err": {"message": "no such container"}}})
    + frame(0, {"type": "response", "id": 3, "reply": {"Ok": {"kind": "stats", "json": "{}", "oom_kills": 1}}})
    + frame(0, {"type": "consumed", "stream": 1, "bytes": 4096})
    + frame(2, b"output") + frame(2, b"") + frame(0, {"type": "request", "id": 9, "request": {"op": "ping"}}))
put("proto_host", "bad-version", frame(0, dict(hello, version=99)) + frame(0, b"{not json"))
reqs = [{"op": "create_container", "id": "c1", "config": json.dumps(spec),
         "rootfs": {"serial": "c1", "fstype": "erofs"},
         "io": {"stdin": 1, "stdout": 2, "stderr": 3, "terminal": False}, "files": [], "shares": []},
        {"op": "exec", "container": "c1", "exec_id": "e1", "process": json.dumps(spec["process"]),
         "io": {"stdin": None, "stdout": 5, "stderr": 6, "terminal": True}},
        {"op": "update", "container": "c1", "resources": '{"memory":{"limit":1048576},"pids":{"limit":5}}'},
        {"op": "wait", "container": "c1", "exec_id": None}]
wire = frame(0, dict(hello, software="hull 0.1.0", realtime=[1700000000, 5]))
for i, r in enumerate(reqs):
    wire += frame(0, {"type": "request", "id": i + 1, "request": r})
put("proto_agent", "conversation", b"\x07" + wire + frame(1, b"stdin bytes") + frame(1, b""))
put("proto_agent", "too-large", b"\x00" + struct.pack(">II", 0, 0xffffffff))

# Virtio programs: bring-up (feature mask, queue sizes), then ops (see
# crates/hull-fuzz/src/virtio/mod.rs). 0 = chain: queue, count-1, then per buffer
# addr (mode, u16), len (mode, u16), flags; 6 = notify queue; 10 = host event.
def buf(off, length, write):
    return bytes([0]) + struct.pack("<H", off) + bytes([0]) + struct.pack("<H", length) + bytes([write])
up = lambda queues: struct.pack("<Q", 2**64 - 1 >> 1) + bytes([4] * queues)  # one size per queue
blk_out = buf(0, 16, 0) + buf(8, 512, 0) + buf(200, 1, 1)   # header, data, status
blk_in = buf(0, 16, 0) + buf(8, 512, 1) + buf(200, 1, 1)
blk_hdr = bytes([8]) + struct.pack("<H", 0) + bytes([16]) + struct.pack("<IIQ", 1, 0, 2)  # OUT, sector 2
put("virtio_blk", "write-read", b"\x00" + up(1) + blk_hdr + bytes([0, 0, 2]) + blk_out + bytes([6, 0])
    + bytes([0, 0, 2]) + blk_in + bytes([6, 0]))
put("virtio_mmio", "handshake", bytes([9, 0]) + struct.pack("<H", 0x70) + bytes([9, 5]) + struct.pack("<HQ", 0x70, 3)
    + bytes([9, 0]) + struct.pack("<H", 0x10) + bytes([9, 5]) + struct.pack("<HQ", 0x30, 0)
    + bytes([9, 5]) + struct.pack("<HQ", 0x38, 16) + bytes([9, 5]) + struct.pack("<HQ", 0x44, 1) + bytes([6, 0]))
rx = bytes([0, 0, 0]) + buf(0, 1600, 1)
tx = bytes([0, 1, 0]) + buf(1024, 12 + 60, 0)
put("virtio_net", "rx-tx", b"\x02" + up(2) + rx + bytes([6, 0]) + tx + bytes([6, 1]) + bytes([10]) + struct.pack("<H", 60) + b"\xff" * 60)
vs_hdr = struct.pack("<QQIIIHHIII", 3, 2, 1025, 1024, 0, 1, 1, 0, 65536, 0)  # REQUEST to host port 1024
put("virtio_vsock", "connect", up(3) + bytes([0, 0, 0]) + buf(0, 4096, 1) + bytes([6, 0])
    + bytes([8]) + struct.pack("<H", 1024) + bytes([len(vs_hdr)]) + vs_hdr
    + bytes([0, 1, 0]) + buf(8192, 44, 0) + bytes([6, 1])
    + bytes([10, 0, 10, 2]) + struct.pack("<I", 52) + bytes([10, 3]) + struct.pack("<H", 5) + b"hello")
put("virtio_console", "echo", up(2) + bytes([0, 0, 0]) + buf(0, 256, 1) + bytes([6, 0])
    + bytes([8]) + struct.pack("<H", 1024) + bytes([5]) + b"hello" + bytes([0, 1, 0]) + buf(8192, 5, 0) + bytes([6, 1])
    + bytes([10, 0, 10, 3]) + struct.pack("<H", 3) + b"abc")
