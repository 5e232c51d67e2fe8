#!/usr/bin/env bash
# Memory per connection (issue 11's aims), measured on the real binary:
#   (a) RSS per bare TCP connect that sends nothing (N_BARE, default 3000), store mode;
#   (b) RSS per idle established mTLS connection (N_IDLE, default 10000 in store mode,
#       9000 in forward mode: a relay holds two descriptors per client and the machine
#       caps a process at 20,000).
# Each figure: a fresh server, one probe connection to warm it, RSS (VmRSS of the process)
# before and after the N connections, divided by N. RUNS runs (default 3), median.
#   benches/memory/run.sh            # prints a table; raw samples in $OUT (default /tmp)
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${RUNS:-3}
N_BARE=${N_BARE:-3000}
N_IDLE=${N_IDLE:-10000}
N_IDLE_FWD=${N_IDLE_FWD:-9000}
OUT=${OUT:-/tmp/lakegate-memory-$$}
BIN=${BIN:-target/release/lakegate}
IDLE=benches/compare/idle.py
[ -x "$BIN" ] || cargo build --release
mkdir -p "$OUT"
TMP=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$TMP"; }
trap cleanup EXIT
ulimit -n 20000 2>/dev/null || true

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
rss() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
wait_file() { local _; for _ in $(seq "${2:-600}"); do [ -s "$1" ] && return 0; sleep 0.05; done; echo "timeout waiting for $1" >&2; return 1; }
calc() { awk "BEGIN { printf \"%.${2:-2}f\", $1 }"; }
median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

"$BIN" pki init --dir "$TMP/pki" >/dev/null
"$BIN" pki client --dir "$TMP/pki" alice --spiffe spiffe://lake.example/trainer/alice >/dev/null
mkdir -p "$TMP/store/datasets"
python3 "$IDLE" sink --port-file "$TMP/sink.port" --count-file "$TMP/sink.count" &
PIDS+=($!)
wait_file "$TMP/sink.port"
SINK=$(cat "$TMP/sink.port")

# start MODE -> S_PID S_PORT
start() {
    local mode=$1 backend
    S_PORT=$(free_port)
    if [ "$mode" = store ]; then
        backend="kind = \"store\"
root = \"$TMP/store\"
fsync = \"never\""
        buckets='buckets = ["datasets"]'
    else
        backend="kind = \"forward\"
upstream = \"127.0.0.1:$SINK\""
        buckets=""
    fi
    cat >"$TMP/$mode.toml" <<TOML
[server]
listen = "127.0.0.1:$S_PORT"
workers = 2
max_connections = 20000
handshake_timeout = "300s"
request_head_timeout = "300s"
idle_timeout = "300s"

[tls]
cert = "$TMP/pki/server.crt"
key = "$TMP/pki/server.key"
client_ca = "$TMP/pki/ca.crt"

[admin]
listen = "127.0.0.1:$(free_port)"

[backend]
$backend

[[authz]]
identity = "spiffe://lake.example/trainer/*"
$buckets
access = ["read", "write"]
TOML
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
    if [ "$kind" = bare ]; then
        python3 "$IDLE" bare --port "$S_PORT" -n "$n" --ready-file "$TMP/ready" &
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
    S[store]+="$(measure store idle "$N_IDLE") "
    S[forward]+="$(measure forward idle "$N_IDLE_FWD") "
    echo "run $run: bare ${S[bare]##* } store ${S[store]} forward ${S[forward]}" >&2
done
echo "| figure | median KiB/conn | samples | aim |"
echo "| --- | --- | --- | --- |"
echo "| bare TCP connect that sends nothing, $N_BARE connections (store) | $(echo "${S[bare]}" | tr ' ' '\n' | grep . | median) | ${S[bare]}| ≤ 8 |"
echo "| idle established mTLS, $N_IDLE connections, store | $(echo "${S[store]}" | tr ' ' '\n' | grep . | median) | ${S[store]}| ≤ 16 |"
echo "| idle established mTLS, $N_IDLE_FWD connections, forward | $(echo "${S[forward]}" | tr ' ' '\n' | grep . | median) | ${S[forward]}| ≤ 16 |"
echo "raw samples: $OUT/raw.txt" >&2
