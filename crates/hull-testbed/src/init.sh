#!/bin/sh
# L1's /init (busybox sh): mounts what hull needs, loads KVM, then serves commands from
# the host on ttyS1 until the host kills the VM. See session.rs for the protocol.
export PATH=/usr/local/bin:/usr/bin:/usr/sbin:/bin:/sbin HOME=/root
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm /sys/fs/cgroup /run /tmp /root
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mount -t cgroup2 cgroup2 /sys/fs/cgroup
# The host checks /dev/kvm itself; what insmod said is kept for its report.
for m in $(cat /testbed/modules/order); do
    insmod "/testbed/modules/$m" >>/testbed/insmod.log 2>&1 || echo "insmod $m: exit $?" >>/testbed/insmod.log
done

chan=/dev/ttyS1
# Raw: no echo, no line-length limit, no newline translation either way.
stty -F "$chan" raw -echo

serve() {
    exec 3<>"$chan"
    echo "@@hull-testbed ready $(uname -r) $(cut -d' ' -f1 /proc/uptime)" >&3
    while read -r id secs cmd <&3; do
        echo "$cmd" | base64 -d >/tmp/.testbed-cmd
        # KILL: a command that ignores TERM must not hold up the checks after it. The
        # channel stays the server's alone: a command (or what it leaves running) that
        # held fd 3 could take bytes of the next command line.
        timeout -s KILL "$secs" sh /tmp/.testbed-cmd </dev/null >/tmp/.testbed-out 2>&1 3>&-
        rc=$?
        echo "@@hull-testbed begin $id" >&3
        base64 /tmp/.testbed-out >&3
        echo "@@hull-testbed end $id $rc" >&3
    done
    echo "@@hull-testbed channel closed" >&3
}

# The server reads in a child of init: the orphans the commands leave (a detached
# container's proxy) end as init's children, and their SIGCHLD, taken in the middle
# of init's own `read`, cut a command line short (seen: the begin marker of a command
# with no id, its line read in two).
serve &
server=$!
while kill -0 "$server" 2>/dev/null; do
    wait "$server"
done
poweroff -f
