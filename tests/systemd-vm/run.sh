#!/usr/bin/env bash
# Proves the shmring units under a real systemd, inside a throw-away qemu VM.
#
# Builds (once, then cached) a Debian bookworm minbase root with systemd and a kernel,
# copies it to a scratch folder, puts the shmring .deb there (scripts/build-deb, or
# SHMRING_VM_DEB), adds the guest test (guest/test.sh, run by guest/shmring-vm-test.service
# after boot: it installs the package with dpkg -i and checks it), packs the folder into an
# ext4 image without mounting anything, boots it under qemu (three times: the test reboots
# the VM twice) and reads the PASS/FAIL lines the guest prints on its serial console. Exit 0
# only if every check passed.
#
# systemd, systemd-tmpfiles and systemd-sysusers run only inside the VM, never here.
#
# Environment: SHMRING_VM_CACHE (default /var/cache/shmring-vm), SHMRING_VM_MIRROR
# (default: the bookworm mirror of this machine's apt sources), SHMRING_VM_TIMEOUT (seconds
# for the boots and the test, default 1200), SHMRING_VM_ACCEL (default tcg: nested KVM
# hangs on our machines), SHMRING_VM_DEB=PATH (test this .deb; by default
# scripts/build-deb builds one), SHMRING_VM_KEEP=1 (keep the scratch folder), SHMRING_VM_SHELL=1 (after the checks, keep
# the VM up with a root shell on the serial console, which is this terminal; no timeout),
# SHMRING_VM_ONLY="check check..." (only these checks, and enable-and-reboot; for a quick
# run while working on them, never in CI).
# Each run's serial log is $cache/serial-<time>-<pid>.log, kept when the run fails (its
# path is printed), removed when it passes; last-serial.log points at the latest failure's.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache=${SHMRING_VM_CACHE:-/var/cache/shmring-vm}
timeout_s=${SHMRING_VM_TIMEOUT:-1200}
shell=${SHMRING_VM_SHELL:-0}
accel=${SHMRING_VM_ACCEL:-tcg}
suite=bookworm
# What the guest root holds. udev comes with initramfs-tools anyway; jq reads shmctl's JSON.
packages=systemd,udev,dbus,linux-image-amd64,jq
# Bump when the way the root is built changes, so old caches are not reused.
recipe=1

say() { printf '==> %s (%s)\n' "$*" "$(date -u +%H:%M:%S)"; }
die() { printf 'run.sh: %s\n' "$*" >&2; exit 1; }

[[ $EUID -eq 0 ]] || die "must run as root (debootstrap, and mke2fs -d keeps file owners)"

# The bookworm mirror this machine's apt already uses (one-line or deb822 sources).
find_mirror() {
    local m
    m=$(sed -nE 's/^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?(https?:[^[:space:]]+)[[:space:]]+bookworm[[:space:]].*/\2/p' \
        /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | head -n1) || true
    if [[ -z $m ]]; then
        m=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk -v RS= '
            /(^|\n)Suites:[^\n]*[ \t]bookworm([ \t\n]|$)/ {
                if (match($0, /URIs:[ \t]*[^ \t\n]+/)) { u = substr($0, RSTART, RLENGTH); sub(/URIs:[ \t]*/, "", u); print u; exit }
            }') || true
    fi
    echo "${m:-http://deb.debian.org/debian}"
}
mirror=${SHMRING_VM_MIRROR:-$(find_mirror)}

started=$(date +%s)
scratch=""
cleanup() {
    local status=$?
    if [[ -n $scratch && -d $scratch ]]; then
        if [[ ${SHMRING_VM_KEEP:-0} == 1 ]]; then
            echo "kept $scratch"
        else
            rm -rf --one-file-system "$scratch"
        fi
    fi
    exit "$status"
}
trap cleanup EXIT

# --- host tools ----------------------------------------------------------------------
missing=()
command -v debootstrap >/dev/null || missing+=(debootstrap)
command -v qemu-system-x86_64 >/dev/null || missing+=(qemu-system-x86)
command -v mke2fs >/dev/null || missing+=(e2fsprogs)
if ((${#missing[@]})); then
    say "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# --- the cached guest root -----------------------------------------------------------
key=$(printf '%s\n' "recipe=$recipe" "suite=$suite" "variant=minbase" "packages=$packages" "mirror=$mirror" |
    sha256sum | cut -c1-16)
root="$cache/root-$key"

# debootstrap mounts /proc and /sys inside its target while it installs: never leave them
# mounted after a failure, and never let rm cross into them.
unmount_under() {
    local m
    for m in $(awk -v p="$1/" 'index($2, p) == 1 { print $2 }' /proc/self/mounts | sort -r); do
        umount -l "$m" || true
    done
}
remove_tree() { unmount_under "$1"; rm -rf --one-file-system "$1"; }

build_root() {
    build_tmp="$root.tmp.$$"
    say "building the guest root $root (cold cache: debootstrap $suite from $mirror)"
    trap 'remove_tree "$build_tmp"; cleanup' EXIT
    # The kernel and its initramfs come with the base install: the kernel's postinst
    # writes /boot/vmlinuz-* and /boot/initrd.img-* inside the target.
    debootstrap --variant=minbase --include="$packages" "$suite" "$build_tmp" "$mirror" \
        >"$cache/debootstrap.log" 2>&1 ||
        { tail -n 40 "$cache/debootstrap.log"; die "debootstrap failed (log: $cache/debootstrap.log)"; }
    unmount_under "$build_tmp"
    compgen -G "$build_tmp/boot/vmlinuz-*" >/dev/null && compgen -G "$build_tmp/boot/initrd.img-*" >/dev/null ||
        die "no kernel or initramfs in $build_tmp/boot"
    # Smaller copies per run; nothing here is needed to boot.
    rm -rf "$build_tmp"/var/cache/apt/archives/*.deb "$build_tmp"/var/lib/apt/lists/* \
        "$build_tmp"/usr/share/doc/* "$build_tmp"/usr/share/man/* "$build_tmp"/usr/share/locale/*
    mv "$build_tmp" "$root"
    trap cleanup EXIT
}

mkdir -p "$cache"
exec 9>"$cache/lock"
flock 9
for stale in "$cache"/root-*.tmp.*; do [[ -e $stale ]] && remove_tree "$stale"; done
if [[ -d $root ]]; then
    say "guest root cached: $root"
else
    build_started=$(date +%s)
    build_root
    say "guest root built in $(($(date +%s) - build_started)) s"
fi
flock -u 9
kernel=$(compgen -G "$root/boot/vmlinuz-*" | sort -V | tail -n1)
initrd=$(compgen -G "$root/boot/initrd.img-*" | sort -V | tail -n1)

# --- the package ---------------------------------------------------------------------
deb=${SHMRING_VM_DEB:-}
if [[ -z $deb ]]; then
    say "building the package (scripts/build-deb)"
    deb_started=$(date +%s)
    deb=$("$repo/scripts/build-deb" | tail -n1)
    say "package built in $(($(date +%s) - deb_started)) s"
fi
[[ -f $deb ]] || die "no package at '$deb'"
echo "    $deb ($(stat -c %s "$deb") bytes, $(date -r "$deb" -u +%F.%T))"

# --- the scratch root and its image --------------------------------------------------
scratch=$(mktemp -d "${TMPDIR:-/var/tmp}/shmring-vm.XXXXXX")
guest="$scratch/root"
say "staging the guest in $scratch"
cp -a "$root" "$guest"

# The package, which the guest test installs with dpkg -i as a user would.
install -D -m 0644 "$deb" "$guest/root/shmring.deb"

# The test: a oneshot unit after multi-user.target that prints to the serial console.
install -D -m 0755 "$here/guest/test.sh" "$guest/usr/local/lib/shmring-vm-test/test.sh"
install -m 0644 "$here/guest/shmring-vm-test.service" "$guest/etc/systemd/system/"
if [[ $shell == 1 ]]; then
    touch "$guest/etc/shmring-vm-keep"
    sed -i 's/^TimeoutStartSec=.*/TimeoutStartSec=infinity/' "$guest/etc/systemd/system/shmring-vm-test.service"
else
    # The guest's own bound, a minute inside this script's, so the guest still powers off.
    sed -i "s/^TimeoutStartSec=.*/TimeoutStartSec=$((timeout_s > 120 ? timeout_s - 60 : 60))/" "$guest/etc/systemd/system/shmring-vm-test.service"
fi
if [[ -n ${SHMRING_VM_ONLY:-} ]]; then echo "$SHMRING_VM_ONLY" >"$guest/etc/shmring-vm-only"; fi
ln -s ../shmring-vm-test.service "$guest/etc/systemd/system/multi-user.target.wants/shmring-vm-test.service"
# No login prompt on the console the test prints to.
ln -s /dev/null "$guest/etc/systemd/system/serial-getty@ttyS0.service"
rm -f "$guest/etc/.updated" "$guest/var/.updated"

image="$scratch/disk.img"
mke2fs -q -t ext4 -d "$guest" "$image" 2G
rm -rf --one-file-system "$guest"

# --- boot ----------------------------------------------------------------------------
log="$scratch/serial.log"
run_log="$cache/serial-$(date -u +%Y%m%dT%H%M%S)-$$.log"
say "booting (qemu -accel $accel, timeout ${timeout_s} s for all boots; serial log $run_log)"
boot_started=$(date +%s)
qemu=(qemu-system-x86_64 -accel "$accel" -m 1024 -smp 1 -nographic -no-reboot -nic none
    -kernel "$kernel" -initrd "$initrd"
    -append "root=/dev/vda rw console=ttyS0 init=/lib/systemd/systemd quiet panic=1"
    -drive "file=$image,format=raw,if=virtio")
# The guest prints SHMRING-VM-REBOOT and reboots (after enable-and-reboot and after
# package-remove); under -no-reboot qemu exits then, and the same disk boots again. At most
# three boots.
set +e
for boot in 1 2 3; do
    left=$((timeout_s - ($(date +%s) - boot_started)))
    ((left > 0)) || { qemu_status=124; break; }
    if [[ $shell == 1 ]]; then
        # The console is this terminal, both ways; poweroff in the guest ends it.
        "${qemu[@]}" 2>&1 | tee -a "$log"
    else
        timeout --kill-after=10 "$left" "${qemu[@]}" </dev/null 2>&1 |
            tee -a "$log" | sed -un 's/\r$//; /^\(PASS\|FAIL\|MUTANT\|SHMRING-VM-\)/p'
    fi
    qemu_status=${PIPESTATUS[0]}
    ((qemu_status == 0 && $(tr -d '\r' <"$log" | grep -cx 'SHMRING-VM-REBOOT') == boot)) || break
    say "the guest rebooted: booting it again ($(($(date +%s) - boot_started)) s so far)"
done
set -e
vm_seconds=$(($(date +%s) - boot_started))

# --- verdict -------------------------------------------------------------------------
tr -d '\r' <"$log" >"$log.txt"
# Kept next to the cache, one file per run (concurrent runs do not overwrite each other);
# removed again below if the run passes.
cp "$log.txt" "$run_log"
mapfile -t expected < <(sed -n 's/^CHECKS=(\(.*\))$/\1/p' "$here/guest/test.sh" | tr ' ' '\n' | sed '/^$/d')
((${#expected[@]})) || die "no CHECKS=(...) line in guest/test.sh"
if [[ -n ${SHMRING_VM_ONLY:-} ]]; then
    mapfile -t expected < <(printf '%s\n' "${expected[@]}" | grep -xF -f <(tr ' ' '\n' <<<"$SHMRING_VM_ONLY enable-and-reboot"))
    echo "SHMRING_VM_ONLY: checking only ${expected[*]}"
fi
problems=()
((qemu_status == 0)) || problems+=("qemu exited with status $qemu_status$( ((qemu_status == 124)) && echo " (timed out after ${timeout_s} s)")")
grep -qx 'SHMRING-VM-TEST-END' "$log.txt" || problems+=("no SHMRING-VM-TEST-END line")
for name in "${expected[@]}"; do
    grep -qx "PASS $name" "$log.txt" || problems+=("check $name did not PASS")
done
if grep -q '^FAIL' "$log.txt"; then problems+=("a check printed FAIL"); fi

echo
echo "---- summary ----"
grep -E '^(PASS|FAIL|MUTANT) ' "$log.txt" || echo "(no PASS/FAIL lines)"
boot_line=$(grep -m1 -o 'SHMRING-VM-TEST-BEGIN.*' "$log.txt" || true)
echo "guest: ${boot_line#SHMRING-VM-TEST-BEGIN }"
echo "VM wall time ${vm_seconds} s, whole run $(($(date +%s) - started)) s"
if ((${#problems[@]})); then
    echo
    if grep -q '^FAIL' "$log.txt"; then
        # Each FAIL line with the status and journal excerpts the guest printed after it.
        echo "---- the failed checks, from the serial log (all of it: $run_log) ----"
        # awk stops itself after 400 lines: no `| head`, whose early exit would kill awk
        # with SIGPIPE and this script (pipefail) before the FAILED summary.
        awk '/^FAIL / { on = 1 } /^(== |PASS |SHMRING-VM-TEST-END)/ { on = 0 } on && n++ < 400' "$log.txt"
    else
        echo "---- serial log, last 150 lines (all of it: $run_log) ----"
        tail -n 150 "$log.txt"
    fi
    echo
    printf 'FAILED: %s\n' "${problems[@]}"
    ln -sfn "$(basename "$run_log")" "$cache/last-serial.log"
    echo "serial log kept: $run_log"
    exit 1
fi
rm -f "$run_log"
echo "all ${#expected[@]} checks passed"
