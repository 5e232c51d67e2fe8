#!/usr/bin/env bash
# Small GETs from the store backend, binary against binary: server CPU-µs per request and
# the client's p50/p99 request latency for 4 KiB GETs over keep-alive mTLS connections.
# Made to price the per-request file lookups (open of the bucket folder, openat2 of the
# object, statx, the digest getxattrs) as plain syscalls (d2f53ca) vs io_uring ops
# (46482e7).
#
#   benches/store/small.sh BIN_A [BIN_B ...]       # RUNS=3, runs interleaved A B A B ...
#   RUNS=5 REQS=100000 benches/store/small.sh /tmp/lg-d2f53ca /tmp/lg-46482e7
#   MODE=upload REQS=50000 benches/store/small.sh A B   # small PUTs instead (each one a
#                                                      # commit: xattrs, rename)
#   MODE=upload FSYNC=always REQS=5000 benches/store/small.sh A B   # with fsync (the
#                                                      # server's default)
#
# Setup: a lab PKI and a store root in a temp folder under /var/tmp (on the disk, so the
# user xattrs holding the digests exist), bucket "datasets" with OBJECTS (default 1000)
# objects of SIZE (default 4KiB) uploaded through lakegate (`load --mode upload`), so
# they carry stored digests. workers = 1, fsync = FSYNC (default "never"), etag md5 (the
# default).
#
# Each run and binary: a fresh `BIN serve` pinned to core SC (default 0; `cores = [SC]`
# and taskset); an unmeasured warm-up of WARM (default 2000) GETs; then REQS (default
# 200000, ~15 s on a 2-core EPYC VM) GETs by `BIN_A load --mode download` (the same
# client for every binary) on CONNS (default 4) keep-alive connections, pinned to core
# CC (default 1). Server CPU =
# utime+stime of the whole process (worker, pool and io-wq threads, live or exited) from
# /proc/PID/stat before and after the load run, in clock ticks.
#
# `load --mode download` GETs one object per connection, "small/{conn}-probe", which it
# PUTs first on the connection (a setup request, not in the latencies but inside the CPU
# window: CONNS PUTs against REQS GETs). The OBJECTS objects only fill the bucket.
# `load` has no HEAD mode, so there is no HEAD measurement.
#
# Ports PORT (default 38443) and PORT+1 (admin); refuses to start if either is taken.
# Needs python3, taskset, curl.
set -eu
cd "$(dirname "$0")/../.."
# shellcheck source=benches/lib.sh disable=SC1091 # -x follows it; plain shellcheck cannot
. benches/lib.sh

[ $# -ge 1 ] || die "usage: $0 BIN_A [BIN_B ...]"
BINS=()
for b in "$@"; do
    [ -x "$b" ] || die "$b is not executable"
    BINS+=("$(realpath "$b")")
done
LOADGEN=${BINS[0]}
export LG=$LOADGEN # used by lab_pki / lab_config
RUNS=${RUNS:-3}
REQS=${REQS:-200000}
MODE=${MODE:-download}
FSYNC=${FSYNC:-never}
WARM=${WARM:-2000}
CONNS=${CONNS:-4}
SIZE=${SIZE:-4KiB}
OBJECTS=${OBJECTS:-1000}
PORT=${PORT:-38443}
ADMIN=$((PORT + 1))
SC=${SC:-0}
CC=${CC:-1}
UPTIME0=$(uptime)

if ss -ltn | awk '{ print $4 }' | grep -qE ":($PORT|$ADMIN)\$"; then die "port $PORT or $ADMIN busy"; fi

bench_tmp D /var/tmp/lg-small.XXXXXX
lab_pki "$D/pki"
mkdir -p "$D/data/datasets"
lab_config "$D/pki" "$PORT" "$ADMIN" --server "workers = 1" --server "cores = [$SC]" \
    --backend 'kind = "store"' --backend "root = \"$D/data\"" --backend "fsync = \"$FSYNC\"" \
    --authz 'buckets = ["datasets"]' --authz 'access = ["read", "write", "delete", "list"]' \
    >"$D/lg.toml"
for b in "${BINS[@]}"; do "$b" check --config "$D/lg.toml" >/dev/null || die "$b check failed"; done
TLSARGS=(--ca "$D/pki/ca.crt" --cert "$D/pki/alice.crt" --key "$D/pki/alice.key")

SRV=""
# start BIN -> SRV = the server's pid, ready
start() {
    taskset -c "$SC" "$1" serve --config "$D/lg.toml" >>"$D/serve.log" 2>&1 &
    SRV=$!
    PIDS+=("$SRV")
    local _
    for _ in $(seq 100); do
        curl -s "http://127.0.0.1:$ADMIN/readyz" | grep -q ready && return 0
        kill -0 "$SRV" 2>/dev/null || die "$1 serve exited (see $D/serve.log)"
        sleep 0.1
    done
    die "$1 serve not ready"
}
stop() { kill -TERM "$SRV"; wait "$SRV" || true; }

# load OUT.json MODE REQUESTS [PREFIX] -> runs the load generator on core CC
load() {
    taskset -c "$CC" "$LOADGEN" load --target "127.0.0.1:$PORT" "${TLSARGS[@]}" --mode "$2" \
        --object-size "$SIZE" --connections "$CONNS" --requests "$3" --bucket datasets \
        --key-prefix "${4:-small/}" --cores "$CC" --no-progress --json "$1" >"$1.txt" 2>&1
}

# jget FILE -> "ops requests errors_total setup status p50 p99 client_cpu_s", from the report
jget() {
    python3 - "$1" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
q = r["latency_us"]["request"]
st = ",".join(f"{k}:{v}" for k, v in r["status"].items())
print(r["ops"], r["requests"], r["errors_total"], r["setup_requests"], st, q["p50"], q["p99"], r["client_cpu"]["total_s"])
PY
}

ticks() { awk '{ print $14, $15 }' "/proc/$1/stat"; }

log "== $OBJECTS objects of $SIZE into datasets/obj/ (through ${BINS[0]##*/})"
start "${BINS[0]}"
load "$D/upload.json" upload "$OBJECTS" obj/
stop
read -r _ _ e _ st _ _ _ < <(jget "$D/upload.json")
[ "$e" = 0 ] || die "upload: $e errors ($(cat "$D/upload.json.txt"))"
n=$(find "$D/data/datasets/obj" -type f | wc -l)
x=$(python3 -c 'import os, sys; print(len(os.listxattr(sys.argv[1])))' "$(find "$D/data/datasets/obj" -type f | head -1)")
log "   upload statuses $st; $n files; $x xattrs on the first"

declare -a ROWS
declare -A CPU P50 P99 RUNCPU
for i in $(seq "$RUNS"); do
    for b in "${BINS[@]}"; do
        name=${b##*/}
        start "$b"
        load "$D/warm.json" "$MODE" "$WARM"
        read -r u0 s0 < <(ticks "$SRV")
        t0=$(date +%s.%N)
        load "$D/run.json" "$MODE" "$REQS"
        t1=$(date +%s.%N)
        read -r u1 s1 < <(ticks "$SRV")
        thr=$(find "/proc/$SRV/task" -mindepth 1 -maxdepth 1 | wc -l)
        stop
        read -r ops req err setup st p50 p99 ccpu < <(jget "$D/run.json")
        cp "$D/run.json" "$D/run-$i-$name.json"
        us=$(calc "($u1 + $s1 - $u0 - $s0) * 1000000 / $TCK / $ops" 1)
        uus=$(calc "($u1 - $u0) * 1000000 / $TCK / $ops" 1)
        sus=$(calc "($s1 - $s0) * 1000000 / $TCK / $ops" 1)
        wall=$(calc "$t1 - $t0" 1)
        row="| $i | $name | $us | $uus | $sus | $p50 | $p99 | $ops / $req | $st | $err | $setup | $wall | $ccpu | $thr |"
        ROWS+=("$row")
        log "$row"
        CPU[$name]+="$us "
        RUNCPU["$i $name"]=$us
        P50[$name]+="$p50 "
        P99[$name]+="$p99 "
    done
done
UPTIME1=$(uptime)

A=${BINS[0]##*/}
cat <<MD

## store small ${MODE}s — $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), kernel $(uname -r)
command: \`MODE=$MODE FSYNC=$FSYNC REQS=$REQS RUNS=$RUNS benches/store/small.sh $*\`
$REQS ${MODE} requests of $SIZE per run (after $WARM unmeasured), $CONNS keep-alive connections, client \`${LOADGEN##*/} load --mode $MODE\` on core $CC; server workers = 1 on core $SC; store root on $(df --output=fstype "$D" | tail -1) ($D), bucket of $OBJECTS + $CONNS objects.
uptime at start: $UPTIME0
uptime at end:   $UPTIME1

| run | binary | server CPU-µs/req | user | sys | p50 µs | p99 µs | ok / responses | statuses | errors | setup PUTs | wall s | client CPU-s | server threads at end |
|---|---|---|---|---|---|---|---|---|---|---|---|---|---|
$(printf '%s\n' "${ROWS[@]}")

| binary | median CPU-µs/req | median p50 µs | median p99 µs | ratio of medians, CPU-µs/req ÷ ${A} | same-run ratios ÷ ${A} (median) |
|---|---|---|---|---|---|
MD
for b in "${BINS[@]}"; do
    name=${b##*/}
    # shellcheck disable=SC2086 # the per-binary lists are space-separated on purpose
    m=$(median ${CPU[$name]}) ma=$(median ${CPU[$A]})
    pr=()
    for i in $(seq "$RUNS"); do pr+=("$(calc "${RUNCPU["$i $name"]} / ${RUNCPU["$i $A"]}" 3)"); done
    # shellcheck disable=SC2086
    echo "| $name | $m | $(median ${P50[$name]}) | $(median ${P99[$name]}) | $(calc "$m / $ma" 3) | ${pr[*]} ($(median "${pr[@]}")) |"
done
