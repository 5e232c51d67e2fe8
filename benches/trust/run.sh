#!/usr/bin/env bash
# The cost of re-verifying the client chain on TLS 1.3 resumption (src/tls/resume.rs,
# VerifyingTicketer): full and resumed mTLS handshakes per server CPU-second, OLD binary
# (resumption skips chain verification) against NEW (chain + CRL + time + identity
# re-checked when a ticket is opened). Same PKI, same client (NEW's `lakegate load`),
# runs interleaved (old,new then new,old, ...), ratio new/old taken run by run, medians.
#
#   OLD=/tmp/hsbench/old/lakegate NEW=/tmp/hsbench/new/lakegate \
#     RUNS=5 DURATION=8s CONNS=8 benches/trust/run.sh > results.md
#   PKI_ARGS="--key-type rsa2048" ...   an RSA CA and server key (the client key stays
#                   ECDSA P-256, as in benches/compare's "rsa"); default: ECDSA P-256.
#   PROFILE=1 ...   also: perf record (cpu-clock, DWARF call graphs) of each server during
#                   one extra resumed run after the measured ones, classified by
#                   perf_share.py (share of samples under the ticket re-verification).
#                   PERF_OUT=/some/prefix keeps the perf.data files (prefix-new.data, ...).
#
# Server (one worker, its admin thread) pinned to core 0, a fresh process per binary and
# round; client and the forward upstream (a python TCP sink) on core 1. Server CPU =
# utime+stime of the whole process from /proc/PID/stat (all threads) before and after
# each load run, divided by CLK_TCK. Progress goes to stderr, the Markdown report to
# stdout. Needs taskset, curl, python3 (and perf for PROFILE=1).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=benches/lib.sh
. "$HERE/../lib.sh"

OLD=${OLD:?OLD=path to the old lakegate binary}
NEW=${NEW:?NEW=path to the new lakegate binary}
RUNS=${RUNS:-5}
DURATION=${DURATION:-8s}
CONNS=${CONNS:-8}
PROFILE=${PROFILE:-0}
SC=0 # server core
CC=1 # client + upstream sink core
OLD=$(realpath "$OLD")
NEW=$(realpath "$NEW")
# The lab PKI and configs are made by NEW (their shape parses under both binaries).
LG=$NEW
for b in "$OLD" "$NEW"; do [ -x "$b" ] || { echo "not executable: $b" >&2; exit 1; }; done
for c in taskset curl python3; do command -v "$c" >/dev/null || { echo "$c missing" >&2; exit 1; }; done

[ "${KEEP:-0}" = 1 ] && KEEP_TMP=1
bench_tmp TMP /tmp/lakegate-trust.XXXXXX
# field of a load --json report: jf FILE EXPR, EXPR in python over the dict r
jf() { python3 -c 'import json, sys; r = json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$1" "$2"; }
LOAD0=$(cut -d" " -f1-3 /proc/loadavg)

echo "== lab PKI in $TMP (made by NEW)" >&2
# shellcheck disable=SC2086 # PKI_ARGS split on purpose
lab_pki "$TMP" ${PKI_ARGS:-} # its CRL revokes no one
TLSARGS=(--ca "$TMP/ca.crt" --cert "$TMP/alice.crt" --key "$TMP/alice.key")

# The forward upstream: accept, read until EOF, close. Cheap enough on the client core.
cat >"$TMP/sink.py" <<'PY'
import os, selectors, socket, sys
sel = selectors.DefaultSelector()
ls = socket.socket()
ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind(("127.0.0.1", 0))
ls.listen(4096)
ls.setblocking(False)
sel.register(ls, selectors.EVENT_READ)
with open(sys.argv[1] + ".tmp", "w") as f:
    f.write(str(ls.getsockname()[1]))
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
while True:
    for k, _ in sel.select():
        s = k.fileobj
        if s is ls:
            try:
                while True:
                    c, _ = ls.accept()
                    c.setblocking(False)
                    sel.register(c, selectors.EVENT_READ)
            except (BlockingIOError, InterruptedError):
                pass
            continue
        try:
            d = s.recv(65536)
        except (BlockingIOError, InterruptedError):
            continue
        except OSError:
            d = b""
        if not d:
            sel.unregister(s)
            s.close()
PY
taskset -c $CC python3 "$TMP/sink.py" "$TMP/sink.port" &
PIDS+=("$!")
for _ in $(seq 100); do [ -s "$TMP/sink.port" ] && break; sleep 0.05; done
[ -s "$TMP/sink.port" ] || { echo "upstream sink did not start" >&2; exit 1; }
UPSTREAM=$(cat "$TMP/sink.port")

# One config per binary; the same shape parses under both (typed identity pattern, no
# admin token). Ports are picked afresh for each server.
write_config() { # NAME PORT ADMIN_PORT
    lab_config "$TMP" "$2" "$3" --server "workers = 1" --server "cores = [$SC]" \
        --backend 'kind = "forward"' --backend "upstream = \"127.0.0.1:$UPSTREAM\"" >"$TMP/$1.toml"
}
declare -A BIN=([old]=$OLD [new]=$NEW)
for name in old new; do
    write_config "$name" "$(free_port)" "$(free_port)"
    if ! "${BIN[$name]}" check --config "$TMP/$name.toml" >"$TMP/$name.check" 2>&1; then
        echo "lakegate check failed for $name (${BIN[$name]}):" >&2
        cat "$TMP/$name.check" >&2
        exit 1
    fi
done

# start NAME -> SRV_PID, SRV_PORT, SRV_ADMIN
start_server() {
    local name=$1
    SRV_PORT=$(free_port)
    SRV_ADMIN=$(free_port)
    write_config "$name" "$SRV_PORT" "$SRV_ADMIN"
    taskset -c $SC "${BIN[$name]}" serve --config "$TMP/$name.toml" 2>>"$TMP/$name.log" &
    SRV_PID=$!
    PIDS+=("$SRV_PID")
    for _ in $(seq 200); do
        curl -sf "http://127.0.0.1:$SRV_ADMIN/readyz" >/dev/null 2>&1 && return 0
        kill -0 "$SRV_PID" 2>/dev/null || break
        sleep 0.05
    done
    echo "$name server did not become ready; its log:" >&2
    tail -20 "$TMP/$name.log" >&2
    exit 1
}
forget() { # drop a reaped PID from the cleanup list
    local p keep=()
    for p in "${PIDS[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
    PIDS=("${keep[@]}")
}
stop_server() {
    kill -TERM "$SRV_PID" 2>/dev/null || true
    wait "$SRV_PID" 2>/dev/null || true
    forget "$SRV_PID"
}

# one load run against the running server: load_run OUT.json [--resume]
# -> "hs_per_cpu_s server_cpu_s handshakes full resumed errors client_cpu_pct server_core_pct hs_per_s"
load_run() {
    local out=$1 c0 c1 d; shift
    c0=$(cpu_total "$SRV_PID")
    taskset -c $CC "$NEW" load --target "127.0.0.1:$SRV_PORT" --server-name localhost "${TLSARGS[@]}" \
        --backend forward --mode handshake --connections "$CONNS" --duration "$DURATION" \
        --no-progress --json "$out" "$@" >/dev/null
    c1=$(cpu_total "$SRV_PID")
    d=$(calc "$c1 - $c0" 2)
    jf "$out" "' '.join(map(str, [
        round((r['handshakes']['full'] + r['handshakes']['resumed']) / $d) if $d > 0 else 'nan', $d,
        r['handshakes']['full'] + r['handshakes']['resumed'], r['handshakes']['full'],
        r['handshakes']['resumed'], r['errors_total'], r['client_cpu']['percent_of_one_core'],
        round($d / r['duration_s'] * 100, 1), round(r['ops_per_s'])]))"
}
# server-side counters worth keeping: ok handshakes, refused resumptions
server_counters() {
    curl -s "http://127.0.0.1:$SRV_ADMIN/metrics" |
        awk '/^lakegate_handshakes_total\{result="ok"/ { print }
             /^lakegate_tls_resumptions_refused_total/ && $2 != 0 { print }
             /^lakegate_tls_sessions/ { print }' | tr '\n' ';'
}

declare -A V # V[name,mode,run] = result line
declare -A COUNTERS
for r in $(seq "$RUNS"); do
    if [ $((r % 2)) = 1 ]; then order="old new"; else order="new old"; fi
    for name in $order; do
        echo "== run $r/$RUNS: $name" >&2
        start_server "$name"
        V[$name,full,$r]=$(load_run "$TMP/$name-full-$r.json")
        echo "   full:    hs/cpu-s cpu-s hs full resumed errors client% server% hs/s = ${V[$name,full,$r]}" >&2
        V[$name,resumed,$r]=$(load_run "$TMP/$name-resumed-$r.json" --resume)
        echo "   resumed: ${V[$name,resumed,$r]}" >&2
        COUNTERS[$name,$r]=$(server_counters)
        stop_server
    done
done

# ---- optional profile of each binary during a resumed run ----
PROF=""
profile() { # NAME -> appends a Markdown section to PROF
    local name=$1 run samples
    echo "== profile: $name, resumed handshakes under perf record -e cpu-clock --call-graph dwarf" >&2
    start_server "$name"
    # warm up with one resumed run so the profiled run is steady state
    load_run "$TMP/prof-warm-$name.json" --resume >/dev/null
    taskset -c $CC perf record -e cpu-clock -F "${PERF_FREQ:-999}" --call-graph dwarf,16384 \
        -p "$SRV_PID" -o "$TMP/perf-$name.data" 2>"$TMP/perf-$name.rec.log" &
    PERF_PID=$!
    PIDS+=("$PERF_PID")
    sleep 0.5
    run=$(load_run "$TMP/prof-$name.json" --resume)
    kill -INT "$PERF_PID"
    wait "$PERF_PID" 2>/dev/null || true
    forget "$PERF_PID"
    stop_server
    perf script -i "$TMP/perf-$name.data" -F comm,tid,ip,sym >"$TMP/perf-$name.script" 2>/dev/null
    perf report -i "$TMP/perf-$name.data" --no-children --sort symbol --stdio >"$TMP/perf-$name.report" 2>/dev/null
    samples=$(grep -c '^[^[:space:]]' "$TMP/perf-$name.script" || true)
    PROF+="
### $name: where the server's CPU goes during resumed handshakes (perf cpu-clock, DWARF call graphs, $samples samples)

Run under perf (not used in the tables above; perf's unwinding adds to the server's CPU): hs/cpu-s cpu-s hs full resumed errors client% server% hs/s = $run

$(python3 "$HERE/perf_share.py" <"$TMP/perf-$name.script")

Top self-time symbols:
\`\`\`
$(awk '/^ +[0-9.]+%/ && n++ < 15 { sub(/[[:space:]]+-[[:space:]]+-[[:space:]]*$/, ""); print }' "$TMP/perf-$name.report")
\`\`\`
"
    if [ -n "${PERF_OUT:-}" ]; then cp "$TMP/perf-$name.data" "$PERF_OUT-$name.data"; fi
}
if [ "$PROFILE" = 1 ]; then
    command -v perf >/dev/null || { echo "perf missing" >&2; exit 1; }
    profile new
    profile old
fi

# ---- report ----
# i-th whitespace-separated field of each argument
field() {
    local i=$1 x
    shift
    # shellcheck disable=SC2086 # split on purpose
    for x in "$@"; do set -- $x; echo "${!i}"; done
}
row() { # NAME MODE -> values of each run
    local r
    for r in $(seq "$RUNS"); do field 1 "${V[$1,$2,$r]}"; done | xargs
}
cat <<EOF

## Handshakes per server CPU-second: resumption re-verified (NEW) vs not (OLD)

$(date -u +%Y-%m-%dT%H:%MZ); PKI: \`pki init ${PKI_ARGS:-}\`; $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)); kernel $(uname -r); server on core $SC (workers = 1), client \`lakegate load\` (NEW's) + python upstream sink on core $CC; $RUNS runs of $DURATION per binary and mode, $CONNS client connections, runs interleaved (odd runs old→new, even runs new→old), fresh server per binary and run; load average at start $LOAD0, at end $(cut -d" " -f1-3 /proc/loadavg).
OLD = $OLD ($(sha256sum "$OLD" | cut -c1-12)); NEW = $NEW ($(sha256sum "$NEW" | cut -c1-12)).

Handshakes = handshakes.full + handshakes.resumed from \`load --json\` (every op is one handshake in this mode); server CPU = Δ(utime+stime)/CLK_TCK of the server process.

| binary | mode | runs (handshakes per server CPU-s) | median |
|---|---|---|---|
EOF
for mode in full resumed; do
    for name in old new; do
        # shellcheck disable=SC2046
        echo "| $name | $mode | $(row $name $mode) | **$(median $(row $name $mode))** |"
    done
done
echo
echo "| ratio new/old, per run | runs | median |"
echo "|---|---|---|"
for mode in full resumed; do
    ratios=()
    for r in $(seq "$RUNS"); do
        ratios+=("$(calc "$(field 1 "${V[new,$mode,$r]}") / $(field 1 "${V[old,$mode,$r]}")" 3)")
    done
    echo "| $mode | ${ratios[*]} | **$(median "${ratios[@]}")** |"
done
cat <<EOF

Per run detail (server CPU-s; handshakes full/resumed as seen by the client; errors; client CPU % of one core; server CPU % of one core; client-observed handshakes/s):

| binary | mode | run | hs/CPU-s | server CPU-s | full/resumed | errors | client CPU % | server CPU % | hs/s |
|---|---|---|---|---|---|---|---|---|---|
EOF
WARN=()
for name in old new; do
    for mode in full resumed; do
        for r in $(seq "$RUNS"); do
            read -r hs cpu _ full res err ccpu scpu rate <<<"${V[$name,$mode,$r]}"
            echo "| $name | $mode | $r | $hs | $cpu | $full/$res | $err | $ccpu | $scpu | $rate |"
            [ "$err" = 0 ] || WARN+=("$name $mode run $r: $err errors")
            if [ "$mode" = resumed ] && [ "$res" -le $((full * 10)) ]; then
                WARN+=("$name resumed run $r did not resume: $full full, $res resumed")
            fi
            if [ "$mode" = full ] && [ "$res" != 0 ]; then
                WARN+=("$name full run $r resumed $res handshakes")
            fi
            if awk -v c="$ccpu" 'BEGIN { exit !(c >= 90) }'; then
                WARN+=("$name $mode run $r: client at ${ccpu}% of its core (client-bound; server at ${scpu}%)")
            fi
        done
    done
done
echo
echo "Server counters at the end of each server's life (ok handshakes; non-zero refused resumptions):"
echo
echo '```'
for r in $(seq "$RUNS"); do for name in old new; do echo "$name run $r: ${COUNTERS[$name,$r]}"; done; done
echo '```'
echo
if [ ${#WARN[@]} = 0 ]; then
    echo "Checks: every run had 0 errors; every resumed run resumed (resumed > 10 × full); no full run resumed; no run had the client core ≥ 90 %."
else
    echo "Checks — anomalies:"
    for w in "${WARN[@]}"; do echo "- $w"; done
fi
echo "${PROF}"
