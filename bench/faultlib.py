"""Shared by bench/faults and bench/load: a private world for one campaign (work dir,
--root, cgroup parent, network namespaces) and a census of what hull left in it.

Everything counted is scoped to what the campaign made, since other agents run
containers on this host at the same time: cgroups below our own parent, mounts and
unix sockets naming our work dir, processes descended from this driver (it is a child
subreaper, so whatever hull daemonises or orphans is re-parented here) or in our
cgroups, taps in our network namespaces, and entries of our --root.
"""

import ctypes
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PR_SET_CHILD_SUBREAPER = 36
KINDS = ("cgroups", "mounts", "processes", "taps", "sockets", "state")


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def hull_binary():
    """$HULL, or the release build (built here, under the shared cargo lock)."""
    if os.environ.get("HULL"):
        return shutil.which(os.environ["HULL"]) or os.environ["HULL"]
    subprocess.run(
        ["flock", "/tmp/hull-cargo.lock", "cargo", "build", "--release", "--quiet", "--bin", "hull"],
        cwd=REPO, check=True,
    )
    return os.path.join(REPO, "target/x86_64-unknown-linux-gnu/release/hull")


def cgroup_hierarchies():
    out = []
    for line in open("/proc/self/mountinfo"):
        f = line.split()
        sep = f.index("-")
        if f[sep + 1] in ("cgroup", "cgroup2"):
            out.append(f[4])
    return out


def proc_stat(pid):
    """(state letter, ppid) of pid, or None once it is gone."""
    try:
        s = open(f"/proc/{pid}/stat").read()
    except OSError:
        return None
    rest = s[s.rfind(")") + 2:].split()
    return rest[0], int(rest[1])


def all_pids():
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def fd_count(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


class World:
    """The campaign's private corner of the host; `close()` removes it."""

    def __init__(self, tag, bin_path, netns_count=0):
        self.bin = bin_path
        self.me = os.getpid()
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "PR_SET_CHILD_SUBREAPER")
        self.work = tempfile.mkdtemp(prefix=f"/tmp/hull-{tag}.")
        self.root = os.path.join(self.work, "root")
        self.roots = {self.root: bin_path}  # each --root in use, with its runtime
        self.cgroup = f"hull-{tag}-{self.me}"
        self.netns = []
        self.keep_netns = set()  # the witness's, whose taps are not leaks
        self.keep_pids = set()  # long-lived processes the census must not count
        self.env = dict(os.environ)
        # VM rootfs images go to a cache of our own, removed with the work dir.
        cfg = os.path.join(self.work, "config.toml")
        with open(cfg, "w") as f:
            f.write(f'[vm]\nrootfs_cache = "{self.work}/cache"\n')
        self.env["HULL_CONFIG"] = cfg
        self.rootfs = os.path.join(self.work, "rootfs")
        # config.json from `runc spec`, so that no runtime's own defaults favour it.
        subprocess.run(
            [os.path.join(REPO, "scripts/mkbundle"), os.path.join(self.work, "proto"), "sleep", "100000"],
            check=True, env=dict(self.env, HULL="runc"), stdout=subprocess.DEVNULL,
        )
        os.rename(os.path.join(self.work, "proto/rootfs"), self.rootfs)
        self.proto = json.load(open(os.path.join(self.work, "proto/config.json")))
        for i in range(netns_count):
            self.add_netns(i)

    def add_netns(self, i):
        """An engine's network namespace: a veth whose peer sits in a second namespace
        of ours (no interface of the host's namespace is touched)."""
        ns, peer = f"{self.cgroup}-{i}", f"{self.cgroup}-{i}p"
        for cmd in (
            ["ip", "netns", "add", ns], ["ip", "netns", "add", peer],
            ["ip", "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", "p0", "netns", peer],
            ["ip", "-n", ns, "addr", "add", f"10.251.{i % 250}.2/24", "dev", "eth0"],
            ["ip", "-n", ns, "link", "set", "eth0", "up"],
            ["ip", "-n", peer, "link", "set", "p0", "up"],
            ["ip", "-n", ns, "route", "add", "default", "via", f"10.251.{i % 250}.1"],
        ):
            subprocess.run(cmd, check=True)
        self.netns += [ns, peer]
        return ns

    def bundle(self, name, args=("sleep", "100000"), netns=None):
        """A bundle sharing the campaign's rootfs, its cgroup `/<parent>/<name>`."""
        d = os.path.join(self.work, "b", name)
        os.makedirs(d, exist_ok=True)
        c = json.loads(json.dumps(self.proto))
        c["root"]["path"] = self.rootfs
        c["process"]["args"] = list(args)
        c["linux"]["cgroupsPath"] = f"/{self.cgroup}/{name}"
        if netns:
            for n in c["linux"]["namespaces"]:
                if n["type"] == "network":
                    n["path"] = f"/run/netns/{netns}"
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(c, f)
        return d

    def cmd(self, *args, iso=None, root=None, bin_path=None):
        out = [bin_path or self.bin, "--root", root or self.root]
        if iso:
            out += ["--isolation", iso]
        return out + list(args)

    def hull(self, *args, iso=None, timeout=120):
        """Runs one hull command; (exit code or 128+signal, stdout, stderr). Output goes
        through files: a container's init inherits them and would hold a pipe open."""
        with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
            p = subprocess.run(self.cmd(*args, iso=iso), env=self.env, stdin=subprocess.DEVNULL,
                               stdout=out, stderr=err, timeout=timeout)
            out.seek(0)
            err.seek(0)
            code = p.returncode if p.returncode >= 0 else 128 - p.returncode
            return code, out.read(), err.read()

    def spawn(self, *args, iso=None):
        return subprocess.Popen(self.cmd(*args, iso=iso), env=self.env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def reap(self):
        """Reaps orphans re-parented to us (a container's init, a VM's proxy) once dead;
        only pids no subprocess object is waiting for are ever here."""
        for pid in all_pids():
            st = proc_stat(pid)
            if st and st[0] == "Z" and st[1] == self.me:
                try:
                    os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    pass

    def descendants(self):
        kids = {}
        for pid in all_pids():
            st = proc_stat(pid)
            if st:
                kids.setdefault(st[1], []).append(pid)
        out, todo = [], list(kids.get(self.me, []))
        while todo:
            p = todo.pop()
            out.append(p)
            todo += kids.get(p, [])
        return out

    def census(self, keep_ids=()):
        """What is left, by kind: lists of what each kind names."""
        self.reap()
        left = {k: [] for k in KINDS}
        for h in cgroup_hierarchies():
            top = os.path.join(h, self.cgroup)
            for d, subdirs, _ in os.walk(top):
                rel = os.path.relpath(d, top)
                left["cgroups"] += [os.path.join(d, s) for s in subdirs
                                    if (s if rel == "." else rel.split("/")[0]) not in keep_ids]
        for line in open("/proc/self/mountinfo"):
            f = line.split()
            if self.work in f[3] or self.work in f[4]:
                left["mounts"].append(f[4])
        procs = set()
        for pid in self.descendants():
            st = proc_stat(pid)
            if st and st[0] not in "ZX" and pid not in self.keep_pids:
                procs.add(pid)
        for pid in all_pids():
            try:
                cg = open(f"/proc/{pid}/cgroup").read()
            except OSError:
                continue
            if f"/{self.cgroup}/" in cg and not any(f"/{self.cgroup}/{k}\n" in cg for k in keep_ids):
                st = proc_stat(pid)
                if st and st[0] not in "ZX" and pid not in self.keep_pids:
                    procs.add(pid)
        # A process SIGKILLed a moment ago (by its pid namespace's end) may still be on
        # its way out: counted only if still alive a second later.
        deadline = time.time() + 1
        while procs and time.time() < deadline:
            time.sleep(0.05)
            self.reap()
            procs = {p for p in procs if (proc_stat(p) or "Z")[0] not in "ZX"}
        left["processes"] = sorted(procs)
        for ns in self.netns:
            links = subprocess.run(["ip", "-n", ns, "-o", "link"], capture_output=True, text=True).stdout
            left["taps"] += [f"{ns}:{line.split(':')[1].strip()}" for line in links.splitlines()
                             if "hulltap" in line and ns not in self.keep_netns]
        unix = open("/proc/net/unix").read()
        for ns in self.netns[::2]:
            unix += subprocess.run(["ip", "netns", "exec", ns, "cat", "/proc/net/unix"],
                                   capture_output=True, text=True).stdout
        left["sockets"] = [line.split()[-1] for line in unix.splitlines()
                           if self.work in line and not any(f"/{k}/" in line for k in keep_ids)]
        for root in self.roots:
            if os.path.isdir(root):
                left["state"] += sorted(f"{root}/{e}" for e in os.listdir(root) if e not in keep_ids)
        return left

    def close(self):
        """Best effort: whatever a failed run left, then our cgroups, netns, work dir."""
        for root, bin_path in self.roots.items():
            for cid in os.listdir(root) if os.path.isdir(root) else []:
                subprocess.run([bin_path, "--root", root, "delete", "--force", cid], env=self.env,
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for pid in self.descendants():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.2)
        self.reap()
        for h in cgroup_hierarchies():
            top = os.path.join(h, self.cgroup)
            for d, _, _ in sorted(os.walk(top), key=lambda w: -len(w[0])):
                try:
                    os.rmdir(d)
                except OSError:
                    pass
        for ns in self.netns:
            subprocess.run(["ip", "netns", "del", ns], stderr=subprocess.DEVNULL)
        for line in reversed(open("/proc/self/mountinfo").read().splitlines()):
            if self.work in line.split()[4]:
                subprocess.run(["umount", "-l", line.split()[4]], stderr=subprocess.DEVNULL)
        shutil.rmtree(self.work, ignore_errors=True)


def describe(pid):
    """A leaked process as the failure report names it."""
    try:
        cmd = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
        st = proc_stat(pid)
        ns = os.readlink(f"/proc/{pid}/ns/pid")
        cg = [l for l in open(f"/proc/{pid}/cgroup").read().splitlines() if ":memory:" in l or l.startswith("0:")]
        return f"{pid} ({cmd.strip()}; state {st[0]}, ppid {st[1]}, {ns}, {cg})"
    except OSError:
        return f"{pid} (gone)"


def leak_line(label, left):
    counts = ", ".join(f"{k} {len(left[k])}" for k in KINDS)
    return f"{label}: leaked {counts}"


def leak_total(left):
    return sum(len(v) for v in left.values())


def state_of(world, cid, iso=None):
    code, out, err = world.hull("state", cid)
    if code != 0:
        return None
    return json.loads(out)


def wait_status(world, cid, want, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        st = state_of(world, cid)
        if st and st["status"] == want:
            return st
        time.sleep(0.01)
    raise RuntimeError(f"{cid}: status never became {want}: {state_of(world, cid)}")


def shuffled(seq, seed):
    seq = list(seq)
    random.Random(seed).shuffle(seq)
    return seq
