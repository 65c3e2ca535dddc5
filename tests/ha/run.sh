#!/usr/bin/env bash
# ringlb high-availability test: two ringlb nodes sharing a virtual IP through keepalived (VRRP),
# driven by a client through failures and a planned failover. Writes the measured figures to
# tests/ha/RESULTS.md. Needs root, iproute2 and keepalived. See tests/ha/README.md.
#
# Topology, all inside network namespaces named rlbha-<pid>-* (the host's interfaces are never
# touched; every address below exists only inside them):
#
#   client 10.77.0.40-55 ─┐                       ┌─ b1 10.77.0.21:8080
#   lb1    10.77.0.2     ─┼── br0 (namespace sw) ─┼─ b2 10.77.0.22:8080
#   lb2    10.77.0.3     ─┘   VIP 10.77.0.100:80  └─ b3 10.77.0.23:8080
#
# Environment: RINGLB, HA_CLIENT (binaries; default target/release), QUICK=1 (short soak and
# waits), HA_SCENARIOS="1 2 ..." (a subset, in the order given), HA_ADVERT_INT (override the shipped
# advert_int, for measurements), HA_KEEPALIVED_DIR (a variant of conf/keepalived, for
# measurements), HA_RESULTS (where to write the results), HA_KEEP=1 (keep the
# run's logs and tell where).

set -euo pipefail
shopt -s nullglob
# bash reports every SIGKILLed background job ("line N: PID Killed ..."); killing is what this
# test does, so keep those reports out of its output.
exec 2> >(grep --line-buffered -vE '^.*: line [0-9]+: +[0-9]+ Killed ' >&2)

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
RINGLB=${RINGLB:-$TARGET_DIR/release/ringlb}
HA_CLIENT=${HA_CLIENT:-$TARGET_DIR/release/ha-client}
QUICK=${QUICK:-0}
RESULTS=${HA_RESULTS:-$HERE/RESULTS.md}
SHIPPED_KEEPALIVED=${HA_KEEPALIVED_DIR:-$ROOT/conf/keepalived}

P=rlbha-$$-
NS_SW=${P}sw
NODES=(client lb1 lb2 b1 b2 b3)
declare -A ADDR=([client]=10.77.0.40 [lb1]=10.77.0.2 [lb2]=10.77.0.3 [b1]=10.77.0.21 [b2]=10.77.0.22 [b3]=10.77.0.23)
# 16 client addresses: source-hash spreads them over the backends (and their ports last longer).
CLIENT_SOURCES=$(seq -s, -f '10.77.0.%g' 40 55)
VIP=10.77.0.100
VIP_PORT=80
ADMIN=127.0.0.1:9900
BACKEND_PORT=8080
SHUTDOWN_GRACE=5

# Load and thresholds (the issue's acceptance criteria).
HELD=1000
RATE=200
OUTAGE_LIMIT_MS=2000
RETURN_WATCH=30
SOAK=300
if [[ $QUICK == 1 ]]; then
    RETURN_WATCH=10
    SOAK=30
fi

WORK=$(mktemp -d /run/rlbha.XXXXXX)
chmod 755 "$WORK"
TRANSITIONS=$WORK/vrrp-transitions.log
FAILED=0
declare -a ROWS=()
declare -a NOTES=()
declare -A RINGLB_PID=() KEEPALIVED_PID=() BACKEND_PID=() WATCHER_PID=()
READY_CHECK=http://$ADMIN/ready

log() { printf '[ha %s] %s\n' "$(date +%T.%3N)" "$*" >&2; }
die() {
    log "FATAL: $*"
    exit 1
}
ns() { echo "${P}$1"; }
# Runs a command in NODE's namespace. (Background processes are started with `ip netns exec`
# directly, so that $! is the process itself: ip execs the command.)
in_ns() {
    local node=$1
    shift
    ip netns exec "$(ns "$node")" "$@"
}
now_ms() { date +%s%3N; }

# ---------------------------------------------------------------------------------------------
# Clean-up: every process in our namespaces (all started by this script), our namespaces, our
# directory. Runs on any exit, including failures and Ctrl-C.
cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    local name pids
    for name in "${NODES[@]}" sw; do
        [[ -e /run/netns/${P}$name ]] || continue
        pids=$(ip netns pids "${P}$name" 2>/dev/null)
        [[ -n $pids ]] && kill -KILL $pids 2>/dev/null
    done
    [[ -n ${CLIENT_PID:-} ]] && kill -KILL "$CLIENT_PID" 2>/dev/null
    # (No bare `wait`: it would also wait for the stderr filter, which ends only with us.)
    for name in "${NODES[@]}" sw; do
        [[ -e /run/netns/${P}$name ]] || continue
        wait_for 20 "the processes of ${P}$name to end" no_ns_processes "${P}$name"
        ip netns del "${P}$name"
    done
    if [[ ${HA_KEEP:-0} == 1 || $rc != 0 ]]; then
        local keep
        keep=$(mktemp -d /tmp/rlbha-logs.XXXXXX)
        cp -r "$WORK"/. "$keep"/ 2>/dev/null
        log "logs of this run kept in $keep"
    fi
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------------------------------------
# Topology

preflight() {
    [[ $(id -u) == 0 ]] || die "needs root (network namespaces, keepalived)"
    command -v ip >/dev/null || die "needs iproute2 (ip)"
    command -v keepalived >/dev/null || die "needs keepalived (apt-get install keepalived)"
    [[ -x $RINGLB ]] || die "no ringlb binary at $RINGLB (make build)"
    [[ -x $HA_CLIENT ]] || die "no ha-client binary at $HA_CLIENT (cargo build --release -p ringlb-ha-client)"
}

build_topology() {
    ip netns add "$NS_SW"
    ip -n "$NS_SW" link set lo up
    ip -n "$NS_SW" link add br0 type bridge
    ip -n "$NS_SW" link set br0 up
    local node
    for node in "${NODES[@]}"; do
        ip netns add "$(ns "$node")"
        ip -n "$(ns "$node")" link set lo up
        ip -n "$NS_SW" link add "p-$node" type veth peer name eth0 netns "$(ns "$node")"
        ip -n "$NS_SW" link set "p-$node" master br0 up
        ip -n "$(ns "$node")" addr add "${ADDR[$node]}/24" dev eth0
        ip -n "$(ns "$node")" link set eth0 up
    done
    local extra
    for extra in ${CLIENT_SOURCES//,/ }; do
        [[ $extra == "${ADDR[client]}" ]] || ip -n "$(ns client)" addr add "$extra/24" dev eth0
    done
    log "topology up: namespaces ${P}{sw,${NODES[*]}}"
}

# ---------------------------------------------------------------------------------------------
# Processes

wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...: poll COMMAND every 50 ms
    local limit=$1 what=$2
    shift 2
    local deadline=$((SECONDS + limit))
    until "$@"; do
        ((SECONDS < deadline)) || {
            log "timed out after ${limit}s waiting for $what"
            return 1
        }
        sleep 0.05
    done
}

alive() { kill -0 "$1" 2>/dev/null; }
count() { # count PATTERN FILE: matching lines, 0 if there is no file
    local n
    n=$(grep -cs -- "$1" "$2") || true
    echo "${n:-0}"
}

start_backend() {
    local node=$1 dir=$WORK/$1
    mkdir -p "$dir"
    ip netns exec "$(ns "$node")" "$RINGLB" demo-backend --bind "${ADDR[$node]}:$BACKEND_PORT" --name "$node" 2>>"$dir/backend.log" &
    BACKEND_PID[$node]=$!
    wait_for 10 "backend $node" grep -qs "listening on" "$dir/backend.log" || die "backend $node did not start"
}

write_ringlb_config() {
    local node=$1
    cat >"$WORK/$node/ringlb.toml" <<EOF
# ringlb on $node of the high-availability test.
[runtime]
workers = 1
shutdown_grace = "${SHUTDOWN_GRACE}s"

[admin]
bind = "$ADMIN"

[listeners.vip]
# 0.0.0.0 covers the virtual IP whenever keepalived adds it to this node.
bind = "0.0.0.0:$VIP_PORT"
pool = "web"

[pools.web]
# Maglev on the client address: the same table on both nodes, so a client reaches the same
# backend through either (scenarios 1 and 2 check it).
balance = "source-hash"
connect_timeout = "1s"
retries = 2

[pools.web.health]
check = "tcp"
interval = "1s"
timeout = "1s"
rise = 2
fall = 2
passive_fall = 3

[[pools.web.servers]]
addr = "${ADDR[b1]}:$BACKEND_PORT"
name = "b1"

[[pools.web.servers]]
addr = "${ADDR[b2]}:$BACKEND_PORT"
name = "b2"

[[pools.web.servers]]
addr = "${ADDR[b3]}:$BACKEND_PORT"
name = "b3"
EOF
}

# Starts ringlb on NODE and waits for its "running" line and for /ready to answer 200.
start_ringlb() { # start_ringlb NODE
    local node=$1 dir=$WORK/$1
    mkdir -p "$dir"
    [[ -f $dir/ringlb.toml ]] || write_ringlb_config "$node"
    local before
    before=$(count "ringlb running with" "$dir/ringlb.log")
    ip netns exec "$(ns "$node")" "$RINGLB" run -c "$dir/ringlb.toml" 2>>"$dir/ringlb.log" &
    RINGLB_PID[$node]=$!
    running() { (($(count "ringlb running with" "$dir/ringlb.log") > before)); }
    wait_for 15 "ringlb on $node" running || {
        tail -20 "$dir/ringlb.log" >&2
        die "ringlb on $node did not start"
    }
    wait_for 10 "ringlb on $node to pass the track check" in_ns "$node" "$WORK/scripts/ringlb-ready" "$READY_CHECK" ||
        die "ringlb on $node is not ready"
}

# Scripts must sit in a root-only path for enable_script_security: copy them into $WORK.
install_scripts() {
    mkdir -p "$WORK/scripts"
    install -m 0755 "$SHIPPED_KEEPALIVED/ringlb-ready" "$SHIPPED_KEEPALIVED/ringlb-notify" "$WORK/scripts/"
}

# The shipped keepalived.conf with its site settings (and nothing else) set for this topology.
write_keepalived_config() {
    local out=$WORK/keepalived.conf
    # The two nodes share this host's file system: each gets its own watcher file.
    awk -v vip="$VIP/24" -v scripts="$WORK/scripts" -v check="$READY_CHECK" -v logfile="$TRANSITIONS" -v work="$WORK" '
        /^\$VIP=/ { print "$VIP=" vip; next }
        /^\$INTERFACE=/ { print "$INTERFACE=eth0"; next }
        /^\$SCRIPTS=/ { print "$SCRIPTS=" scripts; next }
        /^\$READY_CHECK=/ { print "$READY_CHECK=" check; next }
        /^\$READY_FILE=/ { print "@lb1 $READY_FILE=" work "/lb1/ready"; print "@lb2 $READY_FILE=" work "/lb2/ready"; next }
        /^\$NOTIFY_LOG=/ { print "$NOTIFY_LOG=" logfile; next }
        /^\$MASTER_FILE=/ { print "@lb1 $MASTER_FILE=" work "/lb1/master"; print "@lb2 $MASTER_FILE=" work "/lb2/master"; next }
        { print }
    ' "$SHIPPED_KEEPALIVED/keepalived.conf" >"$out"
    if [[ -n ${HA_ADVERT_INT:-} ]]; then
        sed -i -E "s/^( *advert_int ).*/\1$HA_ADVERT_INT/" "$out"
        NOTES+=("advert_int overridden to $HA_ADVERT_INT s for this run (shipped: $(advert_int_shipped) s)")
    fi
    # Only the site settings may differ from the shipped file.
    local changed
    changed=$(diff "$SHIPPED_KEEPALIVED/keepalived.conf" "$out" | grep -E '^[<>]' | grep -vcE '^[<>] ((@lb[12] )?\$(VIP|INTERFACE|SCRIPTS|READY_CHECK|READY_FILE|NOTIFY_LOG|MASTER_FILE)=| *advert_int )' || true)
    [[ $changed == 0 ]] || die "the test's keepalived.conf differs from the shipped one beyond the site settings"
    keepalived -t -f "$out" -i lb1 -l >"$WORK/keepalived-check.log" 2>&1 ||
        die "keepalived -t rejects the config: $(cat "$WORK/keepalived-check.log")"
}

# The readiness watcher (what ringlb-ready.service runs on a node), at the service's nice level.
start_watcher() {
    local node=$1 dir=$WORK/$1
    ip netns exec "$(ns "$node")" nice -n -10 "$WORK/scripts/ringlb-ready" --watch "$dir/ready" "$READY_CHECK" \
        2>>"$dir/watcher.log" &
    WATCHER_PID[$node]=$!
    wait_for 5 "the watcher on $node to say ready" grep -qsx 0 "$dir/ready" || die "the watcher on $node did not start"
}

advert_int_shipped() { awk '$1 == "advert_int" { print $2 }' "$SHIPPED_KEEPALIVED/keepalived.conf"; }
advert_int() { awk '$1 == "advert_int" { print $2 }' "$WORK/keepalived.conf"; }

start_keepalived() {
    local node=$1 dir=$WORK/$1
    mkdir -p "$dir"
    rm -f "$dir/keepalived.pid" "$dir/vrrp.pid"
    local before=0
    [[ -f $dir/keepalived.log ]] && before=$(wc -l <"$dir/keepalived.log")
    # Own pid files, so that two instances on one host do not see each other as "already running".
    ip netns exec "$(ns "$node")" keepalived --dont-fork --log-console --log-detail --vrrp --config-id "$node" \
        --use-file "$WORK/keepalived.conf" --pid "$dir/keepalived.pid" --vrrp_pid "$dir/vrrp.pid" \
        >>"$dir/keepalived.log" 2>&1 &
    KEEPALIVED_PID[$node]=$!
    # Started for real: the parent is still there, the VRRP child wrote its pid file and the
    # instance reached a state.
    started() {
        alive "${KEEPALIVED_PID[$node]}" && [[ -s $dir/vrrp.pid ]] &&
            tail -n +"$((before + 1))" "$dir/keepalived.log" | grep -qE '\(ringlb\) Entering (BACKUP|FAULT|MASTER) STATE'
    }
    wait_for 10 "keepalived on $node" started || {
        tail -20 "$dir/keepalived.log" >&2
        die "keepalived on $node did not start"
    }
    alive "$(cat "$dir/vrrp.pid")" || die "keepalived's VRRP process on $node is not running"
}

holds_vip() { ip -n "$(ns "$1")" -4 addr show dev eth0 2>/dev/null | grep -q " $VIP/"; }
vip_holder() {
    local holders=() node
    for node in lb1 lb2; do holds_vip "$node" && holders+=("$node"); done
    echo "${holders[*]:-none}"
}
has_vip_holder() { [[ $(vip_holder) != none ]]; }
wait_vip_on() { wait_for "${2:-10}" "the VIP on $1" holds_vip "$1"; }
other() { [[ $1 == lb1 ]] && echo lb2 || echo lb1; }
transitions() { [[ -f $TRANSITIONS ]] && wc -l <"$TRANSITIONS" || echo 0; }
masters_since() { tail -n +"$(($1 + 1))" "$TRANSITIONS" 2>/dev/null | grep -c " MASTER " || true; }

# Node death: the node vanishes from the network and every process on it dies at once (a
# SIGKILLed keepalived would otherwise leave the VIP on its interface).
kill_node() { # kill_node NODE...
    local node pids
    for node in "$@"; do ip -n "$(ns "$node")" link set eth0 down; done
    for node in "$@"; do
        pids=$(ip netns pids "$(ns "$node")")
        # (A short-lived process of the list, such as a track script, may be gone already.)
        [[ -z $pids ]] || kill -KILL $pids 2>/dev/null || true
    done
    for node in "$@"; do
        wait_for 20 "the processes of $node to die" no_processes "$node" || {
            pids=$(ip netns pids "$(ns "$node")")
            log "still in $node after SIGKILL: $(ps -o pid=,stat=,comm= -p "${pids//$'\n'/,}" | tr '\n' ';')"
        }
    done
}
no_processes() { no_ns_processes "$(ns "$1")"; }
no_ns_processes() { [[ -z $(ip netns pids "$1" 2>/dev/null) ]]; }

# The node boots again: its addresses are as configured (no VIP left over), /run is empty (no
# watcher verdict), its link is up, then ringlb, the watcher and keepalived start in the order
# of their systemd units.
boot_node() {
    local node=$1
    ip -n "$(ns "$node")" addr del "$VIP/24" dev eth0 2>/dev/null || true
    rm -f "$WORK/$node/ready"
    ip -n "$(ns "$node")" link set eth0 up
    start_node "$node"
}
start_node() {
    start_ringlb "$1"
    start_watcher "$1"
    start_keepalived "$1"
}

# ---------------------------------------------------------------------------------------------
# The client

CLIENT_OUT=""
start_client() { # start_client NAME SECONDS
    local name=$1 seconds=$2
    CLIENT_OUT=$WORK/client-$name.out
    MARKS=$WORK/marks-$name
    : >"$MARKS"
    ip netns exec "$(ns client)" "$HA_CLIENT" --target "$VIP:$VIP_PORT" --source "$CLIENT_SOURCES" --held "$HELD" \
        --rate "$RATE" --duration "$seconds" --marks "$MARKS" --csv "$WORK/client-$name.csv" \
        >"$CLIENT_OUT" 2>"$WORK/client-$name.err" &
    CLIENT_PID=$!
    CLIENT_STARTED_MS=$(now_ms)
    PSI_START=$(cpu_stall_us)
    DROPS_START=$(backlog_drops)
    wait_for 40 "the client's held connections" grep -qs '^ready' "$CLIENT_OUT" || die "client did not start"
    local open
    open=$(sed -n 's/^ready held_open=//p' "$CLIENT_OUT")
    [[ $open == "$HELD" ]] || die "client holds $open connections, not $HELD"
}
mark() { echo "$(now_ms) $1" >>"$MARKS"; }
finish_client() {
    local rc=0
    wait "$CLIENT_PID" || rc=$?
    CLIENT_PID=""
    ((rc == 0)) || die "client failed: $(cat "$WORK"/client-*.err | tail -5)"
    local stall=$(($(cpu_stall_us) - PSI_START)) wall=$(($(now_ms) - CLIENT_STARTED_MS))
    if [[ $PSI_START == 0 ]] || ((wall <= 0)); then
        HOST_LOAD="n/a"
    else
        HOST_LOAD="$((stall / 10 / wall)) %"
    fi
    HOST_LOAD+=", $(($(backlog_drops) - DROPS_START)) dropped"
}
# Packets the kernel dropped because a CPU's input backlog was full (all of this host's
# traffic shares it, the test's veth and bridge hops included): lost VRRP adverts look like a
# dead master.
backlog_drops() {
    local total=0 field
    while read -r _ field _; do total=$((total + 16#$field)); done </proc/net/softnet_stat
    echo "$total"
}
# Microseconds that some runnable task of this host waited for a CPU (PSI), 0 if unknown. On a
# machine shared with other work this tells whether the figures of a run are trustworthy.
cpu_stall_us() {
    local total
    total=$(sed -n 's/^some .* total=\([0-9]*\)$/\1/p' /proc/pressure/cpu 2>/dev/null)
    echo "${total:-0}"
}
# fig WINDOW KEY: a figure from the client's report (WINDOW = total or a mark's name).
fig() {
    local line
    if [[ $1 == total ]]; then
        line=$(grep '^total ' "$CLIENT_OUT")
    else
        line=$(grep "^mark=$1 " "$CLIENT_OUT")
    fi
    sed -E "s/.* $2=([^ ]+).*/\1/" <<<" $line"
}
# affinity WINDOW: SOURCE=BACKEND fields, which backend served each client address ("start" =
# before the first mark).
affinity() { sed -n "s/^affinity=$1 //p" "$CLIENT_OUT"; }
# One backend per source, each source served, and the same mapping in both windows.
same_affinity() {
    local a b
    a=$(affinity "$1")
    b=$(affinity "$2")
    [[ -n $a && $a == "$b" && $a != *[+-]* ]]
}
affinity_spread() { affinity "$1" | tr ' ' '\n' | cut -d= -f2 | sort | uniq -c | awk '{ printf "%s%s:%s", sep, $2, $1; sep=" " }'; }

# ---------------------------------------------------------------------------------------------
# Results

check() { # check SCENARIO DESCRIPTION CONDITION...
    local scenario=$1 what=$2
    shift 2
    if "$@"; then
        log "  ok   $what"
        ROWS+=("| $scenario | $what | pass |")
    else
        log "  FAIL $what"
        ROWS+=("| $scenario | $what | **FAIL** |")
        FAILED=1
    fi
}
is_number() { [[ $1 =~ ^[0-9]+$ ]]; }
le() { is_number "$1" && (($1 <= $2)); }
eq() { [[ $1 == "$2" ]]; }

declare -a FIGURES=()
HOST_LOAD="n/a"
# figure SCENARIO "text": one row of figures, with the host's CPU pressure during the scenario.
# The commit under test, and whether the tree differed from it (RESULTS.md itself aside).
commit_tested() {
    local commit
    commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null) || { echo unknown; return; }
    if [[ -n $(git -C "$ROOT" status --porcelain --untracked-files=no -- . ':(exclude)tests/ha/RESULTS.md') ]]; then
        commit+=" plus uncommitted changes"
    fi
    echo "$commit"
}

figure() { FIGURES+=("| $1 | $2 | $HOST_LOAD |"); }

window_summary() { # one line of the figures that matter after a mark
    local w=$1
    echo "outage $(fig "$w" outage_ms) ms, gap $(fig "$w" gap_ms) ms, new ok $(fig "$w" new_ok)," \
        "new failed $(fig "$w" new_failed) (refused $(fig "$w" new_refused), timeout $(fig "$w" new_timeout)," \
        "reset $(fig "$w" new_reset)), slow (>=0.5 s) $(fig "$w" new_slow), max latency $(fig "$w" max_latency_ms) ms," \
        "held connections lost $(fig "$w" held_failed) (fewest open $(fig "$w" held_open_min)), host stall $(fig "$w" stall_ms) ms"
}

write_results() {
    local advert
    advert=$(advert_int)
    {
        echo "# High-availability test results"
        echo
        echo "Written by \`make test-ha\` (tests/ha/run.sh); every run overwrites it."
        echo
        echo "- run: $(date -u +%Y-%m-%dT%H:%M:%SZ), mode $([[ $QUICK == 1 ]] && echo quick || echo full)," \
            "commit $(commit_tested)," \
            "kernel $(uname -r), $(keepalived --version 2>&1 | head -1), $(nproc) CPUs"
        echo "- keepalived: advert_int $advert s; readiness: watcher \`ringlb-ready --watch FILE $READY_CHECK\` (0.1 s probes, fall 3, rise 5) as a track_file (no vrrp_script)"
        echo "- load: $HELD held connections (one request each every 3 s), $RATE new connections/s" \
            "(connect, one request, close; 2.5 s limit), from 16 client addresses; ringlb balance = source-hash"
        local note
        for note in "${NOTES[@]}"; do echo "- note: $note"; done
        echo
        echo "Definitions: *outage* = from the start of the first new connection that failed to the first"
        echo "success of a new connection started no earlier; *gap* = the longest time during which no new"
        echo "connection was served; *slow* = served, but after a retransmitted SYN (>= 0.5 s); *CPU"
        echo "pressure* = share of the time some task of the host waited for a CPU (PSI \"some\") during"
        echo "the scenario (100 %: the host was saturated, figures are pessimistic); *packets dropped* ="
        echo "packets the kernel dropped for a full input backlog meanwhile (lost VRRP adverts look like a"
        echo "dead master); *host stall* = the longest time the client itself did not run."
        echo
        echo "## Measured figures"
        echo
        echo "| scenario | figures | host: CPU pressure, packets dropped |"
        echo "|---|---|---|"
        printf '%s\n' "${FIGURES[@]}"
        echo
        echo "## Checks"
        echo
        echo "| scenario | check | result |"
        echo "|---|---|---|"
        printf '%s\n' "${ROWS[@]}"
    } >"$RESULTS"
}

# ---------------------------------------------------------------------------------------------
# Scenarios. Each starts from both nodes up and one of them holding the VIP, and leaves it so.

active() {
    local holder
    holder=$(vip_holder)
    [[ $holder == lb1 || $holder == lb2 ]] || die "expected exactly one VIP holder, found: $holder"
    echo "$holder"
}

# 1. ringlb SIGKILLed on the active node; then it comes back (no VIP move).
scenario_1() {
    local act stby t0
    act=$(active)
    stby=$(other "$act")
    log "scenario 1: SIGKILL ringlb on the active node $act"
    start_client s1 18
    sleep 3
    t0=$(transitions)
    mark kill
    kill -KILL "${RINGLB_PID[$act]}"
    wait_vip_on "$stby" 5 || true
    local moved_ms=$(($(now_ms) - $(sed -n 's/ kill$//p' "$MARKS")))
    sleep 4
    mark back
    start_ringlb "$act"
    finish_client
    local w=kill
    figure 1 "ringlb killed on $act: VIP on $stby after ~$moved_ms ms (polled); $(window_summary $w)"
    figure 1 "ringlb back on $act: $(window_summary back); VIP holder $(vip_holder)"
    check 1 "ringlb killed: clients served again within $OUTAGE_LIMIT_MS ms (outage $(fig $w outage_ms) ms)" le "$(fig $w outage_ms)" $OUTAGE_LIMIT_MS
    check 1 "ringlb killed: longest gap in service within $OUTAGE_LIMIT_MS ms (gap $(fig $w gap_ms) ms)" le "$(fig $w gap_ms)" $OUTAGE_LIMIT_MS
    check 1 "VIP moved to $stby" eq "$(vip_holder)" "$stby"
    figure 1 "source-hash affinity: 16 client addresses over backends $(affinity_spread start) before; after the failover $(affinity_spread kill)"
    check 1 "source-hash: every client address reaches the same backend through $stby as through $act" same_affinity start kill
    check 1 "ringlb back on $act: no reset, no failure, VIP stays" eq "$(fig back resets)/$(fig back new_failed)/$(masters_since "$t0")" "0/0/1"
}

# 2. Node death of the active node; it comes back (that is scenario 4).
scenario_2() {
    local act stby
    act=$(active)
    stby=$(other "$act")
    log "scenario 2: node death of the active node $act"
    start_client s2 12
    sleep 3
    mark node-death
    kill_node "$act"
    wait_vip_on "$stby" 5 || true
    finish_client
    local w=node-death
    figure 2 "node $act dead: $(window_summary $w)"
    check 2 "node death: clients served again within $OUTAGE_LIMIT_MS ms (outage $(fig $w outage_ms) ms)" le "$(fig $w outage_ms)" $OUTAGE_LIMIT_MS
    check 2 "node death: longest gap in service within $OUTAGE_LIMIT_MS ms (gap $(fig $w gap_ms) ms)" le "$(fig $w gap_ms)" $OUTAGE_LIMIT_MS
    check 2 "VIP moved to $stby" eq "$(vip_holder)" "$stby"
    check 2 "source-hash: every client address reaches the same backend through $stby as through $act" same_affinity start node-death
    DEAD_NODE=$act
}

# 4. The failed node comes back: no VIP move, no reset while the client watches.
scenario_4() {
    local dead=${DEAD_NODE:-}
    if [[ -z $dead ]]; then
        dead=$(other "$(active)")
        kill_node "$dead"
    fi
    local act t0
    act=$(active)
    log "scenario 4: node $dead comes back while $act serves (${RETURN_WATCH}s watch)"
    start_client s4 $((RETURN_WATCH + 12))
    sleep 2
    t0=$(transitions)
    mark boot
    boot_node "$dead"
    mark watch
    sleep "$RETURN_WATCH"
    finish_client
    local moves
    moves=$(masters_since "$t0")
    figure 4 "node $dead back: $(window_summary boot); over the next ${RETURN_WATCH}+ s: $(window_summary watch); VIP moves $moves"
    check 4 "node back: zero resets (held and new) over ${RETURN_WATCH}+ s" eq "$(($(fig boot resets) + $(fig watch resets)))" 0
    check 4 "node back: zero failed new connections" eq "$(($(fig boot new_failed) + $(fig watch new_failed)))" 0
    check 4 "node back: the VIP did not move (stays on $act)" eq "$moves/$(vip_holder)" "0/$act"
    DEAD_NODE=""
}

# 3. Planned failover: ringlb drain on the active node, the VIP moves, the old ringlb stops.
scenario_3() {
    local act stby t0
    act=$(active)
    stby=$(other "$act")
    log "scenario 3: planned failover, drain $act"
    start_client s3 20
    sleep 3
    t0=$(transitions)
    mark drain
    in_ns "$act" "$RINGLB" drain -c "$WORK/$act/ringlb.toml" >>"$WORK/$act/drain.log" 2>&1 ||
        die "ringlb drain failed: $(cat "$WORK/$act/drain.log")"
    wait_vip_on "$stby" 10 || die "the VIP did not move to $stby after the drain"
    local moved_ms=$(($(now_ms) - $(sed -n 's/ drain$//p' "$MARKS")))
    # Stop the drained ringlb: it closes its listeners and gives open connections the grace.
    local stop_start
    stop_start=$(now_ms)
    kill -TERM "${RINGLB_PID[$act]}"
    local rc=0
    wait "${RINGLB_PID[$act]}" || rc=$?
    local stop_ms=$(($(now_ms) - stop_start))
    finish_client
    local w=drain
    figure 3 "drain $act: VIP on $stby after ~$moved_ms ms; old ringlb exited $rc after $stop_ms ms (grace ${SHUTDOWN_GRACE} s); $(window_summary $w)"
    # A connection the old master accepted just before it gave up the VIP, and whose next packet
    # reached the new master, is reset like every established connection of the old master (no
    # TCP state moves between nodes); every attempt to connect must succeed.
    local takeover_ms broken_by
    takeover_ms=$(($(master_since_ms "$stby" "$t0") - $(sed -n 's/ drain$//p' "$MARKS")))
    broken_by=$(fig $w broken_connected_by_ms)
    figure 3 "new connections that failed to connect: $(fig $w new_unserved); in progress on $act when the VIP moved, then reset: $(fig $w new_broken) (accepted by ${broken_by} ms after the drain; $stby master at $takeover_ms ms)"
    check 3 "planned failover: zero failed connection attempts (refused or unanswered)" eq "$(fig $w new_unserved)" 0
    check 3 "planned failover: the only broken new connections ($(fig $w new_broken)) were accepted by $act before $stby took over" \
        in_flight_at_move "$(fig $w new_broken)" "$broken_by" "$takeover_ms"
    check 3 "planned failover: one VIP move, to $stby" eq "$(masters_since "$t0")/$(vip_holder)" "1/$stby"
    check 3 "drained ringlb stopped cleanly (exit 0)" eq "$rc" 0
    # Bring the node back into the pair (a fresh ringlb is not draining).
    start_ringlb "$act"
    wait_for 10 "$act to be BACKUP" backup_again "$act" || true
}

# in_flight_at_move BROKEN CONNECTED_BY_MS TAKEOVER_MS
in_flight_at_move() { [[ $1 == 0 ]] || { is_number "$2" && is_number "$3" && (($2 <= $3)); }; }
# master_since_ms NODE LINE: epoch ms of NODE's first MASTER transition after line LINE of the log.
master_since_ms() {
    local stamp
    stamp=$(tail -n +"$(($2 + 1))" "$TRANSITIONS" | awk -v n="$1" '$2 == n && $5 == "MASTER" { print $1; exit }')
    [[ -n $stamp ]] && date -d "$stamp" +%s%3N || echo 0
}

backup_again() { tail -n 3 "$WORK/$1/keepalived.log" | grep -q "Entering BACKUP STATE"; }

# 5. Both nodes die; one comes back, then the other.
scenario_5() {
    local first second
    first=$(active)
    second=$(other "$first")
    log "scenario 5: both nodes down, then $second back, then $first"
    start_client s5 20
    sleep 2
    mark both-dead
    kill_node "$first" "$second"
    sleep 3
    mark boot
    local boot_start
    boot_start=$(now_ms)
    boot_node "$second"
    mark keepalived-up
    wait_vip_on "$second" 10 || true
    local vip_ms=$(($(now_ms) - boot_start))
    sleep 4
    mark other-back
    boot_node "$first"
    sleep 3
    finish_client
    figure 5 "both dead (3 s): $(window_summary both-dead)"
    figure 5 "$second boots (ringlb, then keepalived): VIP after ~$vip_ms ms from boot; first client served $(fig keepalived-up first_ok_ms) ms after keepalived started; then: $(window_summary keepalived-up)"
    figure 5 "$first boots too: $(window_summary other-back)"
    check 5 "both down: a client is served within $OUTAGE_LIMIT_MS ms of keepalived's start ($(fig keepalived-up first_ok_ms) ms)" le "$(fig keepalived-up first_ok_ms)" $OUTAGE_LIMIT_MS
    check 5 "second node back: zero failures and resets, VIP stays on $second" eq "$(fig other-back new_failed)/$(fig other-back resets)/$(vip_holder)" "0/0/$second"
}

# 6. A backend is killed under load, and during a failover.
scenario_6() {
    local act stby
    act=$(active)
    stby=$(other "$act")
    log "scenario 6: backend b3 killed under load, then a failover, then b3 back"
    start_client s6 24
    sleep 3
    # The mark follows the backend's death (reaped: its sockets are closed), so that what was in
    # flight on it started before the mark.
    kill -KILL "${BACKEND_PID[b3]}"
    wait "${BACKEND_PID[b3]}" || true
    mark backend-killed
    sleep 4
    mark failover
    kill -KILL "${RINGLB_PID[$act]}"
    wait_vip_on "$stby" 5 || true
    sleep 4
    mark backend-back
    start_backend b3
    start_ringlb "$act"
    sleep 6
    finish_client
    local w=backend-killed
    figure 6 "b3 killed: $(window_summary $w); failed new connections that started after b3 died: $(fig $w new_failed_late)"
    figure 6 "then ringlb killed on $act with b3 still down: $(window_summary failover)"
    figure 6 "b3 back: $(window_summary backend-back); served by b3 in the whole run: $(grep -o 'b3=[0-9]*' "$CLIENT_OUT" || echo b3=0)"
    check 6 "backend killed: no new connection that started after b3 died failed" eq "$(fig $w new_failed_late)" 0
    check 6 "backend killed: held connections lost <= those on b3 (~$((HELD / 3)))" le "$(fig $w held_failed)" $((HELD / 3 + HELD / 10))
    check 6 "failover with b3 down: served again within $OUTAGE_LIMIT_MS ms (outage $(fig failover outage_ms) ms)" le "$(fig failover outage_ms)" $OUTAGE_LIMIT_MS
    check 6 "b3 back: zero failures and resets" eq "$(fig backend-back new_failed)/$(fig backend-back resets)" "0/0"
}

# Major page faults so far of each node's keepalived VRRP process, ringlb and watcher, as
# "name=count ...": a process that waits for the disk to page its code back in stalls however
# high its CPU priority (a stalled VRRP master looks dead to the standby).
major_faults() {
    local node name pid out=()
    for node in lb1 lb2; do
        for name in keepalived ringlb watcher; do
            case $name in
                keepalived) pid=$(cat "$WORK/$node/vrrp.pid" 2>/dev/null) ;;
                ringlb) pid=${RINGLB_PID[$node]:-} ;;
                watcher) pid=${WATCHER_PID[$node]:-} ;;
            esac
            # Field 12 of /proc/PID/stat; the fields after the command name start at 3.
            out+=("$node-$name=$(sed 's/.*) //' "/proc/${pid:-0}/stat" 2>/dev/null | awk '{ print $10 }' || true)")
        done
    done
    echo "${out[*]}"
}
fault_delta() { # fault_delta "BEFORE" "AFTER": the per-process increase, "-" where unknown
    local before=$1 after=$2 kv name b a out=()
    for kv in $after; do
        name=${kv%%=*} a=${kv#*=}
        b=$(tr ' ' '\n' <<<"$before" | awk -F= -v n="$name" '$1 == n { print $2 }')
        if [[ -n $a && -n $b ]]; then out+=("$name $((a - b))"); else out+=("$name -"); fi
    done
    local IFS=,
    sed 's/,/, /g' <<<"${out[*]}"
}

# 7. Soak: both CPUs busy, traffic flowing, no VIP transition at all.
scenario_7() {
    local act t0
    act=$(active)
    log "scenario 7: ${SOAK}s soak with both CPUs busy on top of the load; no transition allowed"
    start_client s7 $((SOAK + 5))
    t0=$(transitions)
    mark soak
    local cpu hogs=() faults_before node
    faults_before=$(major_faults)
    local -A log_lines=()
    for node in lb1 lb2; do log_lines[$node]=$(wc -l <"$WORK/$node/keepalived.log"); done
    for cpu in $(seq "$(nproc)"); do
        # Busy loops in the switch namespace (cleaned up with it), bounded by the soak.
        ip netns exec "$NS_SW" timeout "$SOAK" bash -c 'while :; do :; done' &
        hogs+=($!)
    done
    finish_client
    wait "${hogs[@]}" || true
    local moves
    moves=$(($(transitions) - t0))
    # keepalived logs "A thread timer expired N seconds ago" when it ran 1 s or more late.
    local late=()
    for node in lb1 lb2; do
        late+=("$node $(tail -n +"$((log_lines[$node] + 1))" "$WORK/$node/keepalived.log" |
            grep -o 'timer expired [0-9.]* seconds ago' | awk '{ n++; if ($3 > m) m = $3 }
                END { if (n) printf "%d times, up to %.2f s", n, m; else printf "never" }' || true)")
    done
    local faults
    faults=$(fault_delta "$faults_before" "$(major_faults)")
    figure 7 "${SOAK} s, $(nproc) busy loops + load: VIP transitions $moves; $(window_summary soak); major page faults during the soak: $faults; keepalived ran >= 1 s late: ${late[0]}, ${late[1]}"
    check 7 "soak: zero VIP transitions" eq "$moves/$(vip_holder)" "0/$act"
    check 7 "soak: zero failed new connections, zero resets" eq "$(fig soak new_failed)/$(fig soak resets)" "0/0"
}

# ---------------------------------------------------------------------------------------------

main() {
    preflight
    build_topology
    local node
    for node in b1 b2 b3; do start_backend "$node"; done
    mkdir -p "$WORK/lb1" "$WORK/lb2"
    write_ringlb_config lb1
    write_ringlb_config lb2
    install_scripts
    write_keepalived_config
    for node in lb1 lb2; do start_node "$node"; done
    wait_for 10 "a VIP holder" has_vip_holder || die "no node took the VIP"
    log "VIP on $(vip_holder); advert_int $(advert_int) s; readiness check $READY_CHECK"

    local scenarios=${HA_SCENARIOS:-1 2 4 3 5 6 7}
    local s
    for s in $scenarios; do
        "scenario_$s"
        write_results
    done
    write_results
    log "results in $RESULTS"
    ((FAILED == 0)) || die "some checks failed (see $RESULTS)"
    log "all checks passed"
}

main "$@"
