#!/usr/bin/env bash
# Memory per connection (issue 11's aims), measured on the real binary:
#   (a) RSS per bare TCP connect that sends nothing (N_BARE, default 3000), store mode;
#   (a') RSS per connect that sends the first 40 bytes of a ClientHello's record and
#       stops (a handshake paused mid-record; N_BARE connections), store mode;
#   (b) RSS per idle established mTLS connection (N_IDLE, default 10000 in store mode,
#       9000 in forward mode: a relay holds two descriptors per client and the machine
#       caps a process at 20,000).
# Each figure: a fresh server, one probe connection to warm it, RSS (VmRSS of the process)
# before and after the N connections, divided by N. RUNS runs (default 3), median.
#   benches/memory/run.sh            # prints a table; raw samples in $OUT (default /tmp)
set -euo pipefail
cd "$(dirname "$0")/../.."
. benches/lib.sh
CALC_DIGITS=2
RUNS=${RUNS:-3}
N_BARE=${N_BARE:-3000}
N_IDLE=${N_IDLE:-10000}
N_IDLE_FWD=${N_IDLE_FWD:-9000}
OUT=${OUT:-/tmp/lakegate-memory-$$}
BIN=${BIN:-target/release/lakegate}
IDLE=benches/compare/idle.py
[ -x "$BIN" ] || cargo build --release
mkdir -p "$OUT"
LG=$BIN
bench_tmp TMP /tmp/lakegate-memory.XXXXXX
ulimit -n 20000 2>/dev/null || true

lab_pki "$TMP/pki"
mkdir -p "$TMP/store/datasets"
python3 "$IDLE" sink --port-file "$TMP/sink.port" --count-file "$TMP/sink.count" &
PIDS+=($!)
wait_file "$TMP/sink.port" 600
SINK=$(cat "$TMP/sink.port")

# start MODE -> S_PID S_PORT
start() {
    local mode=$1 backend
    S_PORT=$(free_port)
    if [ "$mode" = store ]; then
        backend=(--backend 'kind = "store"' --backend "root = \"$TMP/store\"" --backend 'fsync = "never"'
            --authz 'buckets = ["datasets"]')
    else
        backend=(--backend 'kind = "forward"' --backend "upstream = \"127.0.0.1:$SINK\"")
    fi
    lab_config "$TMP/pki" "$S_PORT" "$(free_port)" --no-crl --server "workers = 2" \
        --server "max_connections = 20000" --server 'handshake_timeout = "300s"' \
        --server 'request_head_timeout = "300s"' --server 'idle_timeout = "300s"' \
        "${backend[@]}" --authz 'access = ["read", "write"]' >"$TMP/$mode.toml"
    "$BIN" serve --config "$TMP/$mode.toml" 2>"$OUT/$mode-$RANDOM.log" &
    # shellcheck disable=SC2034 # read by measure()
    S_PID=$!
    PIDS+=("$S_PID")
    for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$S_PORT") 2>/dev/null && break; sleep 0.05; done
}

# measure MODE KIND N -> KiB per connection
measure() {
    local mode=$1 kind=$2 n=$3 r0 r1 hp
    start "$mode"
    python3 "$IDLE" probe --port "$S_PORT" --ca "$TMP/pki/ca.crt" --cert "$TMP/pki/alice.crt" --key "$TMP/pki/alice.key" >/dev/null
    sleep 1
    r0=$(rss "$S_PID")
    rm -f "$TMP/ready"
    if [ "$kind" = bare ] || [ "$kind" = hello ]; then
        local hello=0
        [ "$kind" = hello ] && hello=40
        python3 "$IDLE" bare --port "$S_PORT" -n "$n" --ready-file "$TMP/ready" --hello-bytes "$hello" &
    else
        python3 "$IDLE" hold --port "$S_PORT" --ca "$TMP/pki/ca.crt" --cert "$TMP/pki/alice.crt" --key "$TMP/pki/alice.key" -n "$n" --ready-file "$TMP/ready" 2>/dev/null &
    fi
    hp=$!
    for _ in $(seq 6000); do
        [ -s "$TMP/ready" ] && break
        kill -0 "$S_PID" 2>/dev/null || { echo "lakegate died; log in $OUT" >&2; exit 1; }
        kill -0 "$hp" 2>/dev/null || { echo "the client died" >&2; exit 1; }
        sleep 0.1
    done
    sleep 2
    r1=$(rss "$S_PID")
    echo "$mode $kind n=$n rss_before_kib=$r0 rss_after_kib=$r1" >>"$OUT/raw.txt"
    kill "$hp" "$S_PID" 2>/dev/null || true
    wait "$hp" "$S_PID" 2>/dev/null || true
    calc "($r1 - $r0) / $n"
}

declare -A S
for run in $(seq "$RUNS"); do
    S[bare]+="$(measure store bare "$N_BARE") "
    S[hello]+="$(measure store hello "$N_BARE") "
    S[store]+="$(measure store idle "$N_IDLE") "
    S[forward]+="$(measure forward idle "$N_IDLE_FWD") "
    echo "run $run: bare ${S[bare]##* } hello ${S[hello]##* } store ${S[store]} forward ${S[forward]}" >&2
done
# med_of KIND -> the median of the samples of KIND (space-separated in S)
med_of() { local a; read -ra a <<<"${S[$1]}"; median "${a[@]}"; }
echo "| figure | median KiB/conn | samples | aim |"
echo "| --- | --- | --- | --- |"
echo "| bare TCP connect that sends nothing, $N_BARE connections (store) | $(med_of bare) | ${S[bare]}| ≤ 8 |"
echo "| connect + 40 bytes of a ClientHello record, then silence, $N_BARE connections (store) | $(med_of hello) | ${S[hello]}| |"
echo "| idle established mTLS, $N_IDLE connections, store | $(med_of store) | ${S[store]}| ≤ 16 |"
echo "| idle established mTLS, $N_IDLE_FWD connections, forward | $(med_of forward) | ${S[forward]}| ≤ 16 |"
echo "raw samples: $OUT/raw.txt" >&2
