#!/bin/bash
# The shmring VM test, run inside the throw-away VM by shmring-vm-test.service once the
# guest has booted. It drives the shipped units with systemctl and prints one line per
# check, "PASS name" or "FAIL name: detail" (then the status and journal of the units
# involved), and finally SHMRING-VM-TEST-END. The checks run in order and build on each
# other: a failure early on makes later ones fail too; read the first FAIL.
set -u
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin SYSTEMD_COLORS=0 SYSTEMD_PAGER=

# Every check, in the order it runs; run.sh reads this line to know what must PASS.
CHECKS=(users-and-dirs start-active run-as-shmring records-flow reload restart-after-kill watchdog-restart stop-clean verify-summary unlink broken-config template-start template-flow template-stop)

RING=/high_perf_ring
PAIR=/shmring_pair

why=""  # set by a failing check: what went wrong, one line
show=() # set by a check: the units whose status and journal a failure prints

info() { echo "  $*"; }
prop() { systemctl show -p "$2" --value "$1"; }
now_ms() { echo $(($(date +%s%N) / 1000000)); }
strip_ansi() { sed 's/\x1b\[[0-9;]*m//g'; }

# running UNIT: active (running) with a main process.
running() { [[ $(prop "$1" ActiveState)/$(prop "$1" SubState) == active/running && $(prop "$1" MainPID) != 0 ]]; }

# must_run UNIT...: each is active (running), else says which is not.
must_run() {
    local u
    for u; do
        running "$u" || { why="$u is $(prop "$u" ActiveState) ($(prop "$u" SubState)), result $(prop "$u" Result)"; return 1; }
    done
}

# uptime_us: CLOCK_MONOTONIC-like microseconds, comparable to systemd's *TimestampMonotonic.
uptime_us() { awk '{ printf "%d\n", $1 * 1000000 }' /proc/uptime; }

# wait_restarted UNIT OLD_PID SECONDS SINCE_US: until UNIT runs again under another main
# process; then says how long after SINCE_US systemd saw it active again, and what its
# journal says since then.
wait_restarted() {
    local deadline=$(($(now_ms) + $3 * 1000)) active
    while (($(now_ms) < deadline)); do
        if running "$1" && [[ $(prop "$1" MainPID) != "$2" ]]; then
            active=$(prop "$1" ActiveEnterTimestampMonotonic)
            info "$1 active again as $(prop "$1" MainPID), $(((active - $4) / 1000)) ms after the event (systemd's ActiveEnterTimestamp), NRestarts $(prop "$1" NRestarts)"
            journalctl -u "$1" -o short-monotonic --no-pager --since "-$((($(uptime_us) - $4) / 1000000 + 2))s" | sed 's/^/    /'
            return 0
        fi
        sleep 0.2
    done
    return 1
}

# has_main UNIT: it has a main process (a MainPID of 0 must never reach kill).
has_main() { (($(prop "$1" MainPID) > 1)) || { why="$1 has no main process"; return 1; }; }

counter() { shmctl stat "$1" --json | jq -er ".counters.$2"; }

# flowing SEGMENT: total_consumed grows over two seconds.
flowing() {
    local a b
    a=$(counter "$1" total_consumed) || { why="shmctl stat $1 --json failed"; return 1; }
    sleep 2
    b=$(counter "$1" total_consumed) || { why="shmctl stat $1 --json failed"; return 1; }
    info "$1 total_consumed $a -> $b in 2 s"
    ((b > a)) || { why="$1: total_consumed did not grow in 2 s ($a -> $b)"; return 1; }
}

# both_alive SEGMENT: a live producer and a live consumer are attached.
both_alive() {
    local alive
    alive=$(shmctl stat "$1" --json | jq -r '[.participants[] | select(.liveness == "alive") | .role] | sort | join(",")')
    info "$1 live participants: $alive"
    [[ $alive == consumer,producer ]] || { why="$1: live participants '$alive', want consumer,producer"; return 1; }
}

# as_shmring UNIT...: the main process runs with uid shmring (real, effective, saved, fs).
as_shmring() {
    local u pid uids want
    want=$(id -u shmring) || { why="no user shmring"; return 1; }
    for u; do
        has_main "$u" || return 1
        pid=$(prop "$u" MainPID)
        uids=$(awk '/^Uid:/ { print $2, $3, $4, $5 }' "/proc/$pid/status")
        info "$u: MainPID $pid, uids $uids ($(stat -c %U "/proc/$pid"))"
        [[ $uids == "$want $want $want $want" ]] || { why="$u runs with uids $uids, want $want (shmring)"; return 1; }
    done
}

# exited_cleanly UNIT: its last run exited 0 and systemd counts it a success. Read from
# the line the exit-status drop-in logs: once a stopped unit is garbage-collected,
# `systemctl show -p ExecMainStatus,Result` reports a fresh unit's 0/success whatever happened.
exited_cleanly() {
    local line="" deadline=$(($(now_ms) + 5000))
    while (($(now_ms) < deadline)); do
        line=$(journalctl -u "$1" -o cat --no-pager | grep '^shmring-vm-test: exit ' | tail -n1)
        [[ -n $line ]] && break
        sleep 0.2
    done
    info "$1 after stop: $(prop "$1" ActiveState), ${line#shmring-vm-test: }"
    [[ $(prop "$1" ActiveState) == inactive ]] || { why="$1 is $(prop "$1" ActiveState) after stop"; return 1; }
    [[ $line == "shmring-vm-test: exit SERVICE_RESULT=success EXIT_CODE=exited EXIT_STATUS=0" ]] ||
        { why="$1 did not exit cleanly: ${line:-no exit line in its journal}"; return 1; }
}

# verified UNIT: the verify sink's "stopped" line of the unit's last run says nothing
# was lost or duplicated.
verified() {
    local line
    line=$(journalctl -u "$1" -o cat --no-pager | grep -E '(^|[^[:alnum:]_])stopped([^[:alnum:]_]|$)' | tail -n1)
    info "$1 stopped line, as logged: $(cat -v <<<"$line")"
    line=$(strip_ansi <<<"$line")
    [[ -n $line ]] || { why="no 'stopped' line in journalctl -u $1"; return 1; }
    [[ $line == *'"lost":0'[,\}]* && $line == *'"duplicated":0'[,\}]* ]] ||
        { why="$1's stopped line does not say \"lost\":0 and \"duplicated\":0: $line"; return 1; }
}

check_users_and_dirs() {
    show=(systemd-sysusers.service systemd-tmpfiles-setup.service)
    local user dir
    user=$(getent passwd shmring) || { why="no user shmring: systemd-sysusers did not apply shmring.conf"; return 1; }
    info "passwd: $user"
    (($(id -u shmring) < 1000)) || { why="shmring is not a system user: $user"; return 1; }
    dir=$(stat -c '%U:%G %a' /var/lib/shmring 2>&1) || { why="systemd-tmpfiles did not create /var/lib/shmring: $dir"; return 1; }
    info "/var/lib/shmring: $dir"
    [[ $dir == "shmring:shmring 750" ]] || { why="/var/lib/shmring is $dir, want shmring:shmring 750"; return 1; }
}

check_start_active() {
    show=(producerd consumerd)
    local out t0
    t0=$(now_ms)
    out=$(timeout 120 systemctl start producerd consumerd 2>&1) || { why="systemctl start producerd consumerd failed: $out"; return 1; }
    info "systemctl start producerd consumerd returned after $(($(now_ms) - t0)) ms (Type=notify: after READY=1)"
    must_run producerd consumerd || return 1
    local env
    env=$(tr '\0' '\n' <"/proc/$(prop consumerd MainPID)/environ" | grep '^WATCHDOG_USEC=')
    [[ $env == WATCHDOG_USEC=3000000 ]] || { why="the WatchdogSec=3s drop-in did not reach consumerd: '$env'"; return 1; }
}

check_run_as_shmring() {
    show=(producerd consumerd)
    as_shmring producerd consumerd || return 1
    local seg
    seg=$(stat -c '%U:%G %a' /dev/shm${RING} 2>&1) || { why="no /dev/shm${RING}: $seg"; return 1; }
    info "/dev/shm${RING}: $seg"
    [[ $seg == "shmring:shmring 600" ]] || { why="/dev/shm${RING} is $seg, want shmring:shmring 600"; return 1; }
}

check_records_flow() {
    show=(producerd consumerd)
    flowing $RING && both_alive $RING
}

check_reload() {
    show=(producerd consumerd)
    local p c out u
    p=$(prop producerd MainPID) c=$(prop consumerd MainPID)
    out=$(timeout 60 systemctl reload producerd consumerd 2>&1) || { why="systemctl reload failed: $out"; return 1; }
    sleep 1
    must_run producerd consumerd || return 1
    [[ $(prop producerd MainPID) == "$p" && $(prop consumerd MainPID) == "$c" ]] ||
        { why="a reload restarted a daemon (MainPIDs $p $c -> $(prop producerd MainPID) $(prop consumerd MainPID))"; return 1; }
    for u in producerd consumerd; do
        journalctl -u $u -o cat --no-pager | strip_ansi | grep -q 'config reloaded' ||
            { why="$u did not log 'config reloaded' after SIGHUP"; return 1; }
    done
    flowing $RING
}

check_restart_after_kill() {
    show=(consumerd)
    local old n0 t0
    has_main consumerd || return 1
    old=$(prop consumerd MainPID) n0=$(prop consumerd NRestarts) t0=$(uptime_us)
    kill -9 "$old"
    wait_restarted consumerd "$old" 15 "$t0" || { why="consumerd did not run again within 15 s of kill -9"; return 1; }
    (($(prop consumerd NRestarts) == n0 + 1)) || { why="NRestarts went $n0 -> $(prop consumerd NRestarts), want +1"; return 1; }
    must_run producerd && flowing $RING
}

check_watchdog_restart() {
    show=(consumerd)
    local old n0 t0
    has_main consumerd || return 1
    old=$(prop consumerd MainPID) n0=$(prop consumerd NRestarts) t0=$(uptime_us)
    kill -STOP "$old"
    wait_restarted consumerd "$old" 15 "$t0" || { why="consumerd did not run again within 15 s of SIGSTOP (WatchdogSec=3s)"; return 1; }
    journalctl -u consumerd -o cat --no-pager | grep -qi 'watchdog timeout' || { why="no 'Watchdog timeout' in journalctl -u consumerd"; return 1; }
    (($(prop consumerd NRestarts) == n0 + 1)) || { why="NRestarts went $n0 -> $(prop consumerd NRestarts), want +1"; return 1; }
    must_run producerd && flowing $RING
}

check_stop_clean() {
    show=(producerd consumerd)
    local out t0
    t0=$(now_ms)
    out=$(timeout 120 systemctl stop producerd consumerd 2>&1) || { why="systemctl stop failed: $out"; return 1; }
    info "systemctl stop producerd consumerd took $(($(now_ms) - t0)) ms"
    exited_cleanly consumerd && exited_cleanly producerd
}

check_verify_summary() {
    show=(consumerd)
    verified consumerd
}

check_unlink() {
    local out status
    out=$(shmctl unlink $RING 2>&1) || { why="shmctl unlink $RING failed: $out"; return 1; }
    info "$out"
    out=$(shmctl stat $RING 2>&1)
    status=$?
    ((status == 66)) || { why="shmctl stat $RING after unlink exited $status, want 66: $out"; return 1; }
}

check_broken_config() {
    show=(producerd@broken)
    local out status t0 journal
    printf '[segment]\nbogus = 1\n' >/etc/shmring/broken.toml
    t0=$(now_ms)
    out=$(timeout 60 systemctl start producerd@broken 2>&1)
    status=$?
    info "systemctl start producerd@broken exited $status after $(($(now_ms) - t0)) ms: $out"
    # Not a check (yet): whether systemd keeps retrying a config error (exit 78).
    sleep 3
    info "3 s later: producerd@broken $(prop producerd@broken ActiveState) ($(prop producerd@broken SubState)), Result=$(prop producerd@broken Result), NRestarts=$(prop producerd@broken NRestarts)"
    journal=$(journalctl -u producerd@broken -o cat --no-pager)
    systemctl stop producerd@broken 2>/dev/null
    systemctl reset-failed producerd@broken 2>/dev/null
    ((status != 0)) || { why="systemctl start producerd@broken succeeded"; return 1; }
    ((status != 124)) || { why="systemctl start producerd@broken still waiting after 60 s"; return 1; }
    grep -q 'bogus' <<<"$journal" || { why="journalctl -u producerd@broken does not name the key bogus"; return 1; }
    grep -qE 'line [0-9]+' <<<"$journal" || { why="journalctl -u producerd@broken gives no line number"; return 1; }
    grep -q 'producer attached' <<<"$journal" && { why="producerd@broken started its main process anyway"; return 1; }
    return 0
}

check_template_start() {
    show=(producerd@demo consumerd@demo)
    local out t0
    t0=$(now_ms)
    out=$(timeout 120 systemctl start producerd@demo consumerd@demo 2>&1) || { why="systemctl start producerd@demo consumerd@demo failed: $out"; return 1; }
    info "systemctl start producerd@demo consumerd@demo returned after $(($(now_ms) - t0)) ms"
    must_run producerd@demo consumerd@demo && as_shmring producerd@demo consumerd@demo
}

check_template_flow() {
    show=(producerd@demo consumerd@demo)
    flowing $PAIR && both_alive $PAIR
}

check_template_stop() {
    show=(producerd@demo consumerd@demo)
    local out
    out=$(timeout 120 systemctl stop producerd@demo consumerd@demo 2>&1) || { why="systemctl stop failed: $out"; return 1; }
    exited_cleanly consumerd@demo && exited_cleanly producerd@demo && verified consumerd@demo || return 1
    out=$(shmctl unlink $PAIR 2>&1) || { why="shmctl unlink $PAIR failed: $out"; return 1; }
}

run_check() {
    local name=$1 u
    why="" show=()
    echo "== $name"
    if "check_${name//-/_}"; then
        echo "PASS $name"
        return
    fi
    echo "FAIL $name: ${why//$'\n'/ | }"
    for u in "${show[@]}"; do
        echo "---- systemctl status $u"
        systemctl status --no-pager --full "$u" 2>&1 | head -n 40
        echo "---- journalctl -u $u --no-pager -n 30"
        journalctl -u "$u" --no-pager -n 30 2>&1
    done
}

# A line of its own: the firmware leaves escape sequences on the console's last line.
echo
echo "SHMRING-VM-TEST-BEGIN uptime $(cut -d' ' -f1 /proc/uptime) s, $(systemctl --version | head -n1), kernel $(uname -r)"

# Test instrumentation, in place before the first start: a short watchdog for the
# watchdog check, and a line in each unit's journal saying how each run ended.
mkdir -p /etc/systemd/system/consumerd.service.d
printf '[Service]\nWatchdogSec=3s\n' >/etc/systemd/system/consumerd.service.d/watchdog.conf
for unit in producerd.service consumerd.service producerd@.service consumerd@.service; do
    mkdir -p "/etc/systemd/system/$unit.d"
    cat >"/etc/systemd/system/$unit.d/exit-status.conf" <<'EOF'
[Service]
# "+": outside the unit's sandbox, which takes seconds to set up under emulation.
# $$ is systemd's escape for a literal $: sh expands these variables.
ExecStopPost=+/bin/sh -c 'echo "shmring-vm-test: exit SERVICE_RESULT=$$SERVICE_RESULT EXIT_CODE=$$EXIT_CODE EXIT_STATUS=$$EXIT_STATUS"'
EOF
done
systemctl daemon-reload

failed_units=$(systemctl --failed --no-legend --plain 2>&1)
[[ -z $failed_units ]] || info "units that failed during boot: $failed_units"
for check in "${CHECKS[@]}"; do
    run_check "$check"
done
echo "SHMRING-VM-TEST-END"
