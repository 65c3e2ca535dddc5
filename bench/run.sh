#!/usr/bin/env bash
# ringlb's load benchmarks: ringlb, HAProxy (tcp, with and without splice-auto), nginx stream and
# the direct path, side by side on loopback, driven by ringlb-bench in interleaved rounds.
# Writes bench/results/latest.{md,svg,jsonl}. Invoked by `make bench`; see bench/README.md.
#
# Environment:
#   QUICK=1          smoke run of a few seconds per target (CI)
#   ROUNDS=N         rounds of the performance workloads (default 3; 1 with QUICK)
#   STRESS_ROUNDS=N  rounds of the 50,000-connection hold (default 1)
#   TARGETS="..."    subset/order of: direct haproxy haproxy-splice nginx ringlb, and the data-path
#                    variants ringlb-splice (runtime.splice = "always") and ringlb-copy ("never");
#                    ringlb itself runs the default, "auto". haproxy-splice-all: HAProxy with
#                    splice(2) for every transfer (option splice-request, splice-response);
#                    ringlb-before: the binary at RINGLB_BEFORE (e.g. a build of the previous
#                    commit), so that a data-path change is measured old against new in one run
#   RINGLB_BEFORE=PATH  the ringlb binary the ringlb-before target runs
#   WORKLOADS="..."  subset of: rr-max rr-sweep conn-max bulk hold-10k hold-50k
#   RATES="..."      offered rates of the rr sweep (requests/s)
#   REQUIRE="..."    targets that must start and complete every run, or the exit status is 1
#                    (default: all five)
#   BACKEND=bench|ringlb  HTTP backends: ringlb-bench http-backend (default) or ringlb demo-backend
#   OUT=DIR          where results go (default bench/results); KEEP=1 keeps the scratch directory
#   NO_BUILD=1       use the binaries already built; NO_INSTALL=1 never calls apt-get
set -euo pipefail

# The variables given, for the report's "command" line (before defaults are filled in).
GIVEN=""
for v in QUICK ROUNDS STRESS_ROUNDS TARGETS WORKLOADS RATES REQUIRE BACKEND RINGLB_BEFORE; do
    [[ -n ${!v:-} ]] && GIVEN+=" $v=\"${!v}\""
done
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TGT=${CARGO_TARGET_DIR:-$ROOT/target}
BENCH_BIN=$TGT/release/ringlb-bench
RINGLB_BIN=${RINGLB:-$TGT/release/ringlb}
CONFIGS=$ROOT/bench/configs
OUT=${OUT:-$ROOT/bench/results}
QUICK=${QUICK:-0}
TARGETS=${TARGETS:-direct haproxy haproxy-splice nginx ringlb}
WORKLOADS=${WORKLOADS:-rr-max rr-sweep conn-max bulk hold-10k hold-50k}
RINGLB_WORKERS=2
STRESS_RINGLB_WORKERS=${STRESS_RINGLB_WORKERS:-6}
REQUIRE=${REQUIRE:-direct haproxy haproxy-splice nginx ringlb}
BACKEND=${BACKEND:-bench}
STREAM_MODULE=/usr/lib/nginx/modules/ngx_stream_module.so

if [[ $QUICK == 1 ]]; then
    ROUNDS=${ROUNDS:-1}
    STRESS_ROUNDS=${STRESS_ROUNDS:-1}
    RATES=${RATES:-5000 20000}
    D_RR=500ms D_RATE=500ms D_CONN=500ms D_BULK=500ms D_HOLD=500ms
    HOLD_SMALL=1000 HOLD_BIG=2000 HOLD_BIG_PROCS=2 RAMP_LIMIT_BIG=10s
else
    ROUNDS=${ROUNDS:-3}
    STRESS_ROUNDS=${STRESS_ROUNDS:-1}
    RATES=${RATES:-10000 25000 40000}
    D_RR=3s D_RATE=3s D_CONN=3s D_BULK=2s D_HOLD=2s
    HOLD_SMALL=10000 HOLD_BIG=50000 HOLD_BIG_PROCS=0 RAMP_LIMIT_BIG=20s
fi

log() { printf '%s\n' "$*" >&2; }

# ---- processes: everything started here is killed on exit, whatever happens ----

WORK=$(mktemp -d "${TMPDIR:-/tmp}/ringlb-bench.XXXXXX")
PIDS=()
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for _ in $(seq 50); do
        local alive=0
        for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
        [[ $alive == 0 ]] && break
        sleep 0.1
    done
    for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [[ ${KEEP:-0} == 1 ]]; then log "scratch directory kept: $WORK"; else rm -rf "$WORK"; fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start NAME CMD...: starts CMD in the background with its output in $WORK/NAME.log.
start() {
    local name=$1
    shift
    "$@" >"$WORK/$name.log" 2>&1 &
    PIDS+=("$!")
    LAST_PID=$!
}

alive() { kill -0 "$1" 2>/dev/null; }

# stop PID: SIGTERM, up to 5 s to exit, then SIGKILL; the pid is forgotten.
stop() {
    local pid=$1 p
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do
        alive "$pid" || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    local keep=()
    for p in "${PIDS[@]}"; do [[ $p == "$pid" ]] || keep+=("$p"); done
    PIDS=("${keep[@]}")
}

# ---- tools ----

install_missing() {
    local need=()
    command -v haproxy >/dev/null || need+=(haproxy)
    command -v nginx >/dev/null || need+=(nginx)
    [[ -e $STREAM_MODULE ]] || need+=(libnginx-mod-stream)
    [[ ${#need[@]} == 0 ]] && return 0
    if [[ ${NO_INSTALL:-0} == 1 ]]; then
        log "missing ${need[*]} and NO_INSTALL=1: those targets will fail"
        return 0
    fi
    local sudo=()
    [[ $(id -u) == 0 ]] || sudo=(sudo)
    log "installing ${need[*]} with apt-get"
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >&2
}

build() {
    [[ ${NO_BUILD:-0} == 1 ]] && return 0
    (cd "$ROOT" && cargo build --release -q -p ringlb-bench)
    if [[ " $TARGETS " == *" ringlb"* || $BACKEND == ringlb ]]; then
        (cd "$ROOT" && cargo build --release -q -p ringlb --bin ringlb) || log "ringlb did not build; it will be reported as failed"
    fi
}

# ---- results ----

RESULTS=$WORK/results.jsonl
: >"$RESULTS"
declare -A FAILED=()

json_str() { local s=${1//\\/\\\\}; s=${s//\"/\\\"}; s=${s//$'\n'/ }; printf '"%s"' "${s//$'\t'/ }"; }
meta() { printf '{"meta":{%s:%s}}\n' "$(json_str "$1")" "$(json_str "$2")" >>"$RESULTS"; }
# fail TARGET REASON [WORKLOAD]
fail() {
    FAILED[$1]=1
    local w=""
    [[ -n ${3:-} ]] && w=",\"workload\":$(json_str "$3")"
    printf '{"failure":{"target":%s,"reason":%s%s}}\n' "$(json_str "$1")" "$(json_str "$2")" "$w" >>"$RESULTS"
    log "FAILED $1${3:+ $3}: $2"
}

# ---- backends and targets ----

declare -A HTTP=() BULK=() PID=()

free_ports() { "$BENCH_BIN" free-ports "$1" | tr '\n' ' '; }
wait_port() { "$BENCH_BIN" wait-port "$1" --timeout "${2:-10s}" 2>/dev/null; }

# Four HTTP backends, one process each, on four ports of 127.0.0.1. Four rather than two because
# a proxy's backend connections all come from 127.0.0.1: each (source address, backend address)
# pair has one ephemeral port range (32768-60999 here), and the kernel's port search for connect()
# tries the even ports first, so once a pair holds more than ~14,000 connections every further
# connect scans them all (measured: two backends, 25,000 connections each, left ringlb with 83 % of
# its CPU in __inet_hash_connect and 35,423 of 50,000 connections served). Four keep the
# 50,000-connection hold at 12,500 per pair, and a process at 12,500 of its 20,000 descriptors.
start_backends() {
    read -r PORT_A PORT_B PORT_C PORT_D PORT_SINK <<<"$(free_ports 5)"
    local port name
    for name in a b c d; do
        case $name in a) port=$PORT_A ;; b) port=$PORT_B ;; c) port=$PORT_C ;; d) port=$PORT_D ;; esac
        if [[ $BACKEND == ringlb ]]; then
            start "backend-$name" "$RINGLB_BIN" demo-backend --bind "127.0.0.1:$port" --name "$name"
        else
            start "backend-$name" "$BENCH_BIN" http-backend --bind "127.0.0.1:$port" --name "$name"
        fi
    done
    start sink "$BENCH_BIN" sink --bind "127.0.0.1:$PORT_SINK"
    for port in "$PORT_A" "$PORT_B" "$PORT_C" "$PORT_D" "$PORT_SINK"; do
        wait_port "127.0.0.1:$port" || { log "backend on port $port did not start"; exit 1; }
    done
    HTTP[direct]="127.0.0.1:$PORT_A 127.0.0.1:$PORT_B 127.0.0.1:$PORT_C 127.0.0.1:$PORT_D"
    BULK[direct]="127.0.0.1:$PORT_SINK"
    PID[direct]=""
}

# fill TEMPLATE HTTP_PORT BULK_PORT [STATS_PORT] [OPTIONS]: prints the template with values filled in.
fill() {
    sed -e "s|@BACKEND_A@|$PORT_A|g; s|@BACKEND_B@|$PORT_B|g; s|@BACKEND_C@|$PORT_C|g; s|@BACKEND_D@|$PORT_D|g" \
        -e "s|@SINK_PORT@|$PORT_SINK|g" \
        -e "s|@HTTP_PORT@|$2|g; s|@BULK_PORT@|$3|g; s|@STATS_PORT@|${4:-0}|g; s|@OPTIONS@|${5:-}|g" \
        -e "s|@DIR@|$WORK|g; s|@STREAM_MODULE@|$STREAM_MODULE|g; s|@WORKERS@|$RINGLB_WORKERS|g" \
        -e "s|@SPLICE@|${SPLICE:-auto}|g" "$CONFIGS/$1"
}

# ready TARGET PID HTTP_ADDR BULK_ADDR: waits for both listeners and records the target.
ready() {
    if wait_port "$3" && wait_port "$4" && alive "$2"; then
        HTTP[$1]=$3 BULK[$1]=$4 PID[$1]=$2
        log "started $1 (pid $2): http $3, bulk $4"
    else
        fail "$1" "did not start: $(tail -n 3 "$WORK/$1.log" 2>/dev/null | tr '\n' ' ')"
    fi
}

start_haproxy() {
    local name=$1 options=$2 h b s
    command -v haproxy >/dev/null || { fail "$name" "haproxy is not installed"; return; }
    read -r h b s <<<"$(free_ports 3)"
    fill haproxy.cfg "$h" "$b" "$s" "$options" >"$WORK/$name.cfg"
    start "$name" haproxy -f "$WORK/$name.cfg" -db
    ready "$name" "$LAST_PID" "127.0.0.1:$h" "127.0.0.1:$b"
    [[ -n ${PID[$name]:-} ]] || return 0
    local info
    info=$({ exec 3<>"/dev/tcp/127.0.0.1/$s" && printf 'show info\n' >&3 && timeout 2 cat <&3; } 2>/dev/null) || true
    meta "$name maxconn (chosen by HAProxy from the descriptor limit)" "$(awk '/^Maxconn:/ {print $2}' <<<"$info")"
    meta "$name maxpipes" "$(awk '/^Maxpipes:/ {print $2}' <<<"$info")"
}

start_nginx() {
    local h b
    if ! command -v nginx >/dev/null || [[ ! -e $STREAM_MODULE ]]; then
        fail nginx "nginx or its stream module is not installed"
        return
    fi
    read -r h b <<<"$(free_ports 2)"
    fill nginx.conf "$h" "$b" >"$WORK/nginx.conf"
    start nginx nginx -p "$WORK" -c "$WORK/nginx.conf" -e "$WORK/nginx-error.log"
    ready nginx "$LAST_PID" "127.0.0.1:$h" "127.0.0.1:$b"
}

# start_ringlb NAME SPLICE: ringlb with runtime.splice = SPLICE. It binds port 0 and reports the
# real ports on stderr (see the start-up contract).
start_ringlb() {
    local name=$1 splice=$2 bin=${3:-$RINGLB_BIN}
    [[ -x $bin ]] || { fail "$name" "no binary at $bin"; return; }
    SPLICE=$splice fill ringlb.toml 0 0 >"$WORK/$name.toml"
    start "$name" "$bin" run -c "$WORK/$name.toml"
    local pid=$LAST_PID log=$WORK/$name.log i
    for i in $(seq 100); do
        grep -q 'ringlb running with' "$log" && break
        alive "$pid" || break
        sleep 0.1
    done
    if ! grep -q 'ringlb running with' "$log" || ! alive "$pid"; then
        fail "$name" "did not start: $(tail -n 3 "$log" | tr '\n' ' ')"
        return
    fi
    local h b
    h=$(grep -oE 'listener http bound [^ ]+' "$log" | head -n1 | awk '{print $4}')
    b=$(grep -oE 'listener bulk bound [^ ]+' "$log" | head -n1 | awk '{print $4}')
    if [[ -z $h || -z $b ]]; then
        fail "$name" "no 'listener NAME bound ADDR' lines in its log"
        return
    fi
    ready "$name" "$pid" "$h" "$b"
    meta "$name threads at start ($RINGLB_WORKERS workers)" "$(awk '/^Threads:/ {print $2}' "/proc/$pid/status")"
}

start_target() {
    case $1 in
        direct) ;;
        haproxy) start_haproxy haproxy "" ;;
        haproxy-splice) start_haproxy haproxy-splice "    option splice-auto" ;;
        haproxy-splice-all) start_haproxy haproxy-splice-all "    option splice-request\n    option splice-response" ;;
        nginx) start_nginx ;;
        ringlb) start_ringlb ringlb auto ;;
        ringlb-splice) start_ringlb ringlb-splice always ;;
        ringlb-copy) start_ringlb ringlb-copy never ;;
        ringlb-before) start_ringlb ringlb-before auto "${RINGLB_BEFORE:-}" ;;
        *) log "unknown target $1"; exit 2 ;;
    esac
}

# A proxy's memory grows with what it has served before and seldom shrinks, so the hold
# workloads, which measure memory per connection, get a freshly started process.
restart_target() {
    local t=$1
    [[ $t != direct && -n ${PID[$t]:-} ]] || return 0
    stop "${PID[$t]}"
    PID[$t]=""
    start_target "$t"
}

# ---- workloads ----

# run_one TARGET WORKLOAD ROUND TARGET_KIND(http|bulk) ARGS...: one run, result appended.
run_one() {
    local t=$1 w=$2 round=$3 kind=$4
    shift 4
    # Targets that did not start, or died, are skipped (their failure is already recorded).
    [[ $t == direct || -n ${PID[$t]:-} ]] || return 0
    local addrs targets=() pids=() a
    [[ $kind == http ]] && addrs=${HTTP[$t]} || addrs=${BULK[$t]}
    for a in $addrs; do targets+=(--target "$a"); done
    [[ -n ${PID[$t]} ]] && pids=(--pid "${PID[$t]}")
    local out
    if out=$("$BENCH_BIN" "$@" "${targets[@]}" "${pids[@]}" --json --quiet --brief \
        --tag "target=$t" --tag "workload=$w" --tag "round=$round" 2>>"$WORK/generator.log"); then
        printf '%s\n' "$out" >>"$RESULTS"
        log "  $(printf '%-15s %-15s' "$w" "$t") $(tail -n 1 "$WORK/generator.log")"
    else
        fail "$t" "run failed: $(tail -n 1 "$WORK/generator.log")" "$w"
    fi
    if [[ -n ${PID[$t]} ]] && ! alive "${PID[$t]}"; then
        fail "$t" "process exited during $w (round $round): $(tail -n 2 "$WORK/$t.log" | tr '\n' ' ')"
        PID[$t]=""
    fi
}

each_target() {
    local t
    for t in $TARGETS; do run_one "$t" "$@"; done
}

each_fresh_target() {
    local t
    for t in $TARGETS; do
        restart_target "$t"
        run_one "$t" "$@"
    done
}

wanted() { [[ " $WORKLOADS " == *" $1 "* ]]; }

run_round() {
    local r=$1 rate
    log "round $r/$ROUNDS"
    if wanted rr-max; then
        each_target rr-max "$r" http rr --conns 64 --duration "$D_RR" \
            --tag "desc=rr: 64 keep-alive connections, flat out"
    fi
    if wanted rr-sweep; then
        for rate in $RATES; do
            each_target "rr-$rate" "$r" http rr --conns 64 --rate "$rate" --duration "$D_RATE" \
                --tag "sweep=$rate" --tag "desc=rr: 64 connections at $rate req/s"
        done
    fi
    if wanted conn-max; then
        each_target conn-max "$r" http conn --conns 32 --duration "$D_CONN" \
            --tag "desc=conn: new connection per request, 32 loops, flat out"
    fi
    if wanted bulk; then
        each_target bulk-up-1 "$r" bulk bulk --streams 1 --direction up --duration "$D_BULK" \
            --tag "desc=bulk: 1 stream, client to server"
        each_target bulk-down-1 "$r" bulk bulk --streams 1 --direction down --duration "$D_BULK" \
            --tag "desc=bulk: 1 stream, server to client"
        each_target bulk-up-4 "$r" bulk bulk --streams 4 --direction up --duration "$D_BULK" \
            --tag "desc=bulk: 4 streams, client to server"
        each_target bulk-down-4 "$r" bulk bulk --streams 4 --direction down --duration "$D_BULK" \
            --tag "desc=bulk: 4 streams, server to client"
    fi
    if wanted hold-10k; then
        each_fresh_target hold-10k "$r" http hold --conns "$HOLD_SMALL" --rate 100 --duration "$D_HOLD" \
            --timeout 2s --ramp-limit 20s --threads 1 \
            --tag "desc=hold: $HOLD_SMALL connections, 100 req/s in total"
    fi
}

run_stress() {
    local r=$1
    wanted hold-50k || return 0
    log "stress round $r/$STRESS_ROUNDS (ringlb with $STRESS_RINGLB_WORKERS workers: one ring holds ~9,000 connections under this machine's 20,000-descriptor limit)"
    RINGLB_WORKERS=$STRESS_RINGLB_WORKERS
    each_fresh_target hold-50k "$r" http hold --conns "$HOLD_BIG" --procs "$HOLD_BIG_PROCS" --rate 100 \
        --duration "$D_HOLD" --timeout 2s --ramp-limit "$RAMP_LIMIT_BIG" --ramp-concurrency 1024 \
        --threads 1 --tag "desc=hold: $HOLD_BIG connections over several client processes, 100 req/s"
    RINGLB_WORKERS=2
}

# ---- main ----

main() {
    install_missing
    build
    [[ -x $BENCH_BIN ]] || { log "no $BENCH_BIN"; exit 1; }
    mkdir -p "$OUT"
    meta "date" "$(date -u '+%Y-%m-%d %H:%M UTC')"
    meta "load average at start (1, 5, 15 min; 2 cores)" "$(cut -d' ' -f1-3 /proc/loadavg)"
    meta "host" "$(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), kernel $(uname -r), descriptor limit $(ulimit -n)"
    meta "commit" "$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
    local cmd="make bench$GIVEN"
    meta "command" "$cmd (rounds $ROUNDS, stress rounds $STRESS_ROUNDS, backends $BACKEND, rr sweep rates $RATES)"
    command -v haproxy >/dev/null && meta "haproxy" "$(haproxy -v | head -n1)"
    command -v nginx >/dev/null && meta "nginx" "$(nginx -v 2>&1)"
    start_backends
    local t
    for t in $TARGETS; do start_target "$t"; done
    local r
    for r in $(seq "$ROUNDS"); do run_round "$r"; done
    for r in $(seq "$STRESS_ROUNDS"); do run_stress "$r"; done
    meta "load average at end (1, 5, 15 min)" "$(cut -d' ' -f1-3 /proc/loadavg)"
    cp "$RESULTS" "$OUT/latest.jsonl"
    "$BENCH_BIN" report --input "$RESULTS" --md "$OUT/latest.md" --svg "$OUT/latest.svg" \
        --order "$TARGETS"
    log "wrote $OUT/latest.md, $OUT/latest.svg and $OUT/latest.jsonl"
    local t status=0
    for t in $REQUIRE; do
        if [[ " $TARGETS " == *" $t "* && -n ${FAILED[$t]:-} ]]; then
            log "required target $t failed"
            status=1
        fi
    done
    for t in $TARGETS; do [[ -n ${FAILED[$t]:-} ]] && log "note: $t failed (see Failures in latest.md)"; done
    return $status
}

main "$@"
