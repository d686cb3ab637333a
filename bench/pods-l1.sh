#!/bin/sh
# Runs inside the nested test bed's L1 (busybox sh, KVM that runs guests); bench/pods-nested
# starts it through hull-testbed. The files of a node that containerd's CRI reads (hosts,
# resolv.conf), then hull-cri-tests' pods client: a private containerd with CNI's bridge,
# the handlers asked for, N pods at once each. No portmap (L1 has no iptables), and runc
# chroots instead of pivot_root (L1 runs from its initramfs, where pivot_root fails).
#   $1 handlers (comma-separated), $2 counts (comma-separated), $3 the pods client
set -eu
handlers=$1 counts=$2 client=$3
mkdir -p /etc /var/lib /run/containerd
[ -s /etc/hosts ] || echo "127.0.0.1 localhost" >/etc/hosts
[ -s /etc/resolv.conf ] || echo "nameserver 127.0.0.1" >/etc/resolv.conf
ip link set lo up
echo "L1: $(nproc) CPUs, $(awk '/MemTotal/ {printf "%.0f MiB", $2 / 1024}' /proc/meminfo), kernel $(uname -r), containerd $(containerd --version | awk '{print $3}')"
# A client that hangs says where: what runs, and what containerd last said.
rc=0
HULL_CRI_PORTMAP=off HULL_CRI_RUNC_NO_PIVOT=1 timeout "${PODS_TIMEOUT:-1500}" \
    "$client" --handlers "$handlers" --counts "$counts" || rc=$?
if [ "$rc" -ne 0 ]; then
    echo "pods-l1: the client ended with $rc; processes:"
    ps -o pid,args | grep -v ' \[' | cut -c1-200
    for log in /tmp/hull-cri-*/containerd.log; do
        echo "pods-l1: $log ends:"
        tail -40 "$log" | cut -c1-400
    done
    exit "$rc"
fi
