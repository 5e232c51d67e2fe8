#!/usr/bin/env bash
# The single-part ETag choice end to end: server CPU-seconds per GiB of curl PUTs of
# one 1 GiB object (single part, TLS 1.3, one keep-alive-free request each) with
# [backend] etag = "sha256" and etag = "md5", RUNS times each, alternating; server CPU =
# utime+stime from /proc/PID/stat around each PUT. workers = 1, fsync = "never", the
# store under a temporary folder of /tmp (deleted at exit). Prints a Markdown table.
#
#   benches/etag/run.sh            # RUNS=3
#
# The in-process part (the hashing alone) is `cargo bench --bench etag`.
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${RUNS:-3}
TCK=$(getconf CLK_TCK)
cargo build --release 2>&1 | tail -1 >&2
LG=$PWD/target/release/lakegate
TMP=$(mktemp -d /tmp/lakegate-etag.XXXXXX)
PID=
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$TMP"; }
trap cleanup EXIT
"$LG" pki init --dir "$TMP" >/dev/null
"$LG" pki client --dir "$TMP" alice --spiffe spiffe://lake.example/trainer/alice >/dev/null
head -c 1G /dev/urandom >"$TMP/obj.bin"
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
cpu() { awk -v t="$TCK" '{ printf "%.3f", ($14 + $15) / t }' "/proc/$1/stat"; }
declare -A RES
for run in $(seq "$RUNS"); do
    for etag in sha256 md5; do
        port=$(free_port)
        mkdir -p "$TMP/store-$etag/datasets"
        cat >"$TMP/lg-$etag.toml" <<TOML
[server]
listen = "127.0.0.1:$port"
workers = 1
[tls]
cert = "server.crt"
key = "server.key"
client_ca = "ca.crt"
[backend]
kind = "store"
root = "store-$etag"
fsync = "never"
etag = "$etag"
[[authz]]
identity = "spiffe://lake.example/trainer/*"
TOML
        "$LG" serve --config "$TMP/lg-$etag.toml" 2>"$TMP/log-$etag" &
        PID=$!
        for _ in $(seq 100); do curl -s -o /dev/null --cacert "$TMP/ca.crt" --cert "$TMP/alice.crt" --key "$TMP/alice.key" "https://127.0.0.1:$port/datasets?list-type=2" && break; sleep 0.1; done
        c0=$(cpu "$PID")
        etag_got=$(curl -sf -D - -o /dev/null --cacert "$TMP/ca.crt" --cert "$TMP/alice.crt" --key "$TMP/alice.key" \
            -T "$TMP/obj.bin" "https://127.0.0.1:$port/datasets/obj.bin" | tr -d '\r' | sed -n 's/^etag: //Ip')
        c1=$(cpu "$PID")
        kill "$PID"; wait "$PID" 2>/dev/null || true; PID=
        rm -rf "$TMP/store-$etag"
        RES[$etag]="${RES[$etag]:-} $(awk -v a="$c0" -v b="$c1" 'BEGIN { printf "%.3f", b - a }')"
        echo "run $run etag=$etag ETag $etag_got CPU-s ${RES[$etag]##* }" >&2
    done
done
med() { tr ' ' '\n' <<<"$1" | sed '/^$/d' | sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
S=$(med "${RES[sha256]}"); M=$(med "${RES[md5]}")
echo "| curl PUT of 1 GiB (median of $RUNS) | server CPU-s/GiB | runs | vs sha256 |"
echo "| --- | ---: | --- | ---: |"
echo "| etag = \"sha256\" | $S |${RES[sha256]} | 1.00x |"
awk -v m="$M" -v s="$S" -v r="${RES[md5]}" 'BEGIN { printf "| etag = \"md5\" | %s |%s | %.2fx |\n", m, r, m / s }'
