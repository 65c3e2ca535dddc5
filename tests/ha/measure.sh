#!/usr/bin/env bash
# The measurements behind the numbers in conf/keepalived/keepalived.conf: how long clients wait
# after a node dies for several advert_int values, and after ringlb dies with and without the
# readiness watcher. Runs tests/ha/run.sh once per variant (as root, ~12 minutes) and prints
# one line per event. Not part of `make test-ha`; docs/high-availability.md quotes its output.
#
# Usage: tests/ha/measure.sh [ROUNDS]   (ROUNDS events per variant, default 3)

set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
ROUNDS=${1:-3}
WORK=$(mktemp -d /run/rlbha-measure.XXXXXX)
chmod 755 "$WORK"
trap 'rm -rf "$WORK"' EXIT

# Each variant: a name, the scenarios to run, and the environment for run.sh.
run_variant() {
    local name=$1 scenarios=$2
    shift 2
    local results=$WORK/$name.md
    env "$@" QUICK=1 HA_SCENARIOS="$scenarios" HA_RESULTS="$results" "$HERE/run.sh" >"$WORK/$name.log" 2>&1 || true
    if [[ ! -s $results ]]; then
        echo "$name: no results (see the end of its log below)"
        tail -5 "$WORK/$name.log"
        return
    fi
    # The figure rows of the failure scenarios: outage and gap after each event, and how busy
    # the host was meanwhile.
    { grep -E '^\| [12] \| (ringlb killed on|node [^ ]+ dead):' "$results" || tail -3 "$WORK/$name.log"; } |
        sed -E "s/^\| ([12]) \| ([^:]*):.* outage ([0-9]+) ms, gap ([0-9]+) ms.*\| ([^|]*) \|$/$name: scenario \1, \2: outage \3 ms, gap \4 ms, CPU pressure \5/"
}

repeat() { # repeat WORD N: WORD N times
    local i out=""
    for ((i = 0; i < $2; i++)); do out+="$1 "; done
    echo "$out"
}

# Node death for three advert_int values (each node death is followed by the node's return).
for advert in 0.3 0.4 0.5 1; do
    run_variant "advert_int=$advert" "$(repeat "2 4" "$ROUNDS")" HA_ADVERT_INT="$advert"
done

# ringlb killed: the shipped readiness (the watcher), then a vrrp_script instead, at its fastest
# setting (interval 1, fall 1; each run makes 3 probes).
run_variant watcher "$(repeat 1 "$ROUNDS")"
variant=$WORK/script-only
mkdir -p "$variant"
cp "$ROOT"/conf/keepalived/* "$variant/"
# The instance tracks the script instead of the watcher's file (defined before the instance).
awk '
    /^\$READY_FILE=/ { print "$READY_CHECK=http://127.0.0.1:9900/ready" }
    /^vrrp_instance / {
        print "vrrp_script ringlb_ready {"
        print "    script \"${SCRIPTS}/ringlb-ready ${READY_CHECK}\""
        print "    interval 1\n    timeout 2\n    fall 1\n    rise 2\n    weight 0\n}\n"
    }
    $1 == "ringlb_ready_file" { print "        ringlb_master\n    }\n    track_script {\n        ringlb_ready"; next }
    $1 == "ringlb_master" && in_instance { next }
    /^vrrp_instance / { in_instance = 1 }
    { print }
' "$ROOT/conf/keepalived/keepalived.conf" >"$variant/keepalived.conf"
run_variant script-only "$(repeat 1 "$ROUNDS")" HA_KEEPALIVED_DIR="$variant"
