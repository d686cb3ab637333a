#!/bin/sh
# Runs inside the nested test bed's L1 (busybox sh, KVM that runs guests); bench/vmm
# starts it through hull-testbed. Prints one line per measurement for bench/vmm to
# summarise:
#   boot VMM RUN ms=N exits=N rss_kib=N pss_kib=N (KIND=N ...)
#       VMM (hull-vmm, qemu, hull-vmm-thp: guest memory madvised for transparent
#       huge pages, as QEMU does, or hull-vmm-disk: from the agent's erofs disk, as
#       hull boots its sandboxes) booted the hull guest (its kernel, its initramfs with
#       hull-agent as init) to the agent's "ready at" line on the serial console: wall
#       time in L1 (/proc/uptime, 10 ms steps), the VM's exits from KVM's debugfs
#       stats, and the VMM's memory then. Runs alternate between the VMMs.
#   density VMM N pss_kib=N proxy_kib=N vmm_kib=N used_kib=N
#       N sandboxes (`hull --isolation vm` under VMM, hull-vmm then qemu, one idle
#       container each): the PSS of each sandbox's proxy and VMM, and L1's used
#       memory per sandbox.
# Both VMMs get the same machine as far as the guest can tell: 1 vCPU, 128 MiB, COM1,
# an i8042, a virtio console for the agent, the host CPU's features with KVM's
# paravirtual clock (hull-vmm passes KVM's supported CPUID; QEMU -cpu host does the
# same with kvmclock on), and the same kernel command line.
#   $1 runs per VMM (default 5), $2 sandboxes for density (default 6)
set -u
runs=${1:-5} sandboxes=${2:-6}
guest=/var/lib/hull/guest
work=/tmp/vmm-bench
mkdir -p $work
grep -q " /sys/kernel/debug " /proc/mounts || mount -t debugfs debugfs /sys/kernel/debug
cmdline="console=ttyS0 reboot=t panic=-1 quiet i8042.noaux i8042.nomux hull.console=hvc0"

cat >$work/hull.json <<EOF
{"kernel": "$guest/vmlinux", "initramfs": "$guest/initramfs.cpio", "cmdline": "$cmdline", "vcpus": 1, "memory_mib": 128, "serial": {"file": "$work/serial"}, "console": {"socket": "$work/console.sock"}}
EOF

centis() { cut -d' ' -f1 /proc/uptime | tr -d .; }

# boot VMM RUN [CPU [CMDLINE]]: one boot to agent-ready, then the VMM is stopped.
boot() {
    rm -f $work/serial $work/console.sock
    line=${4:-$cmdline}
    [ "$1" = hull-vmm-disk ] && line="$line root=/dev/vda ro rootfstype=erofs init=/init"
    sed "s|\"cmdline\": \"[^\"]*\"|\"cmdline\": \"$line\"|" $work/hull.json >$work/run.json
    t0=$(centis)
    case $1 in
    hull-vmm) hull vmm --config $work/run.json >/dev/null 2>&1 & ;;
    hull-vmm-disk)
        sed "s|\"initramfs\": \"[^\"]*\", ||; s|}\$|, \"block\": [{\"path\": \"$guest/agent.erofs\", \"read_only\": true, \"serial\": \"hull-agent\"}]}|" \
            $work/run.json >$work/disk.json
        hull vmm --config $work/disk.json >/dev/null 2>&1 &
        ;;
    hull-vmm-thp)
        sed 's/}$/, "hugepages": "transparent"}/' $work/run.json >$work/thp.json
        hull vmm --config $work/thp.json >/dev/null 2>&1 &
        ;;
    qemu)
        qemu-system-x86_64 -M microvm,acpi=off -accel kvm -cpu "${3:-host}" -m 128M -smp 1 \
            -nodefaults -no-user-config -display none -no-reboot \
            -serial file:$work/serial -device i8042 \
            -kernel $guest/vmlinux -initrd $guest/initramfs.cpio -append "$line" \
            -device virtio-serial-device \
            -chardev socket,id=agent,path=$work/console.sock,server=on,wait=off \
            -device virtconsole,chardev=agent >/dev/null 2>&1 &
        ;;
    esac
    pid=$!
    until grep -q 'ready at' $work/serial 2>/dev/null; do
        kill -0 $pid 2>/dev/null || { echo "boot $1 $2 failed: the VMM exited"; return 1; }
        [ $(($(centis) - t0)) -gt 12000 ] && { echo "boot $1 $2 failed: no agent in 120 s"; kill -9 $pid; return 1; }
        usleep 10000
    done
    t1=$(centis)
    stats=/sys/kernel/debug/kvm/$pid-*
    exits=$(cat $stats/exits 2>/dev/null | head -1)
    kinds=""
    for k in io_exits mmio_exits halt_exits irq_exits irq_window_exits pf_taken pf_fixed; do
        kinds="$kinds ${k%_exits}=$(cat $stats/$k 2>/dev/null | head -1)"
    done
    rss=$(awk '/^VmRSS/ {print $2}' /proc/$pid/status)
    pss=$(awk '/^Pss:/ {print $2}' /proc/$pid/smaps_rollup)
    kill -TERM $pid
    wait $pid 2>/dev/null
    echo "boot $1 $2 ms=$(((t1 - t0) * 10)) exits=${exits:-?} rss_kib=$rss pss_kib=$pss ($kinds )"
}

# Why a ratio can be believed: one boot each with the kernel's log on the console
# (slower, untimed for the ratio): which clock each guest took and how it found the
# TSC's rate. Then QEMU with -cpu kvm64, the model the issue's 40 s boot used.
clocks() {
    boot "$1" log "${2:-host}" "$(echo "$cmdline" | sed 's/ quiet//')"
    grep -iE 'clocksource|tsc|kvm-clock|calibrat|x2apic|apic timer|lpj' $work/serial | sed "s/^/clock $1 ${2:-host}: /" | head -20
}

for i in $(seq "$runs"); do
    boot hull-vmm "$i"
    boot qemu "$i"
    boot hull-vmm-thp "$i"
    boot hull-vmm-disk "$i"
done

clocks hull-vmm
clocks qemu
clocks qemu kvm64
boot qemu kvm64 kvm64 "$cmdline"

# Density: idle sandboxes under each VMM (`hull --isolation vm`, one container each),
# then each one's proxy and VMM. The guest reports the pages it freed 2 s after it
# freed them (free page reporting), so the measurement waits for that.
mkdir -p $work/b/rootfs/bin $work/b/rootfs/proc $work/b/rootfs/sys $work/b/rootfs/dev $work/b/rootfs/tmp
cp /bin/busybox $work/b/rootfs/bin/ && /bin/busybox --install -s $work/b/rootfs/bin
(cd $work/b && hull spec && sed -i 's/"terminal": true/"terminal": false/; s/"sh"$/"sleep", "1000"/' config.json)
density() {
    export HULL_HYPERVISOR=$1
    sync; echo 3 >/proc/sys/vm/drop_caches
    used0=$(free -k | awk '/Mem/ {print $3}')
    for i in $(seq "$sandboxes"); do
        hull --isolation vm create --bundle $work/b d$i >/dev/null && hull start d$i || echo "sandbox $1 $i failed"
    done
    sleep 5
    sync; echo 3 >/proc/sys/vm/drop_caches
    used1=$(free -k | awk '/Mem/ {print $3}')
    proxy=0 vmm=0 n=0
    for i in $(seq "$sandboxes"); do
        p=$(hull state d$i | awk -F'[:,]' '/"pid"/ {gsub(/ /, "", $2); print $2}')
        [ -n "$p" ] || continue
        v=$(cat /proc/$p/task/*/children 2>/dev/null | tr ' ' '\n' | head -1)
        proxy=$((proxy + $(awk '/^Pss:/ {print $2}' /proc/$p/smaps_rollup)))
        vmm=$((vmm + $(awk '/^Pss:/ {print $2}' /proc/$v/smaps_rollup)))
        n=$((n + 1))
    done
    for i in $(seq "$sandboxes"); do hull delete --force d$i >/dev/null 2>&1; done
    [ $n -gt 0 ] || { echo "density $1 failed: no sandbox ran"; return 1; }
    echo "density $1 $n pss_kib=$(((proxy + vmm) / n)) proxy_kib=$((proxy / n)) vmm_kib=$((vmm / n)) used_kib=$(((used1 - used0) / n))"
}
density hull-vmm
density qemu
