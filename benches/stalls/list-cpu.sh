#!/usr/bin/env bash
# The worker's own CPU per LIST page: 40 pages of 1,000 keys of a 50,000-object bucket
# against 40 pages of 1 key (the same TLS handshake per curl), read from the worker
# thread's utime+stime in /proc/<pid>/task/<tid>/stat (clock ticks of 10 ms). Made to
# tell whether the small-GET stall beside LIST pages (run.sh) is the worker's XML work
# or the scheduler. PERF=1 adds a perf profile of the worker during 40 more pages.
#
#   benches/stalls/list-cpu.sh [BIN]      # BIN defaults to target/release/lakegate
#
# workers = 1, store root under /var/tmp, ports PORT (default 38443) and PORT-353.
set -eu
cd "$(dirname "$0")/../.."
. benches/lib.sh
BIN=$(realpath "${1:-target/release/lakegate}")
LG=$BIN
PORT=${PORT:-38443}
ADMIN=$((PORT - 353))
bench_tmp D /var/tmp/lg-list-cpu.XXXXXX
if ss -ltn | awk '{print $4}' | grep -qE ":($PORT|$ADMIN)\$"; then echo "port $PORT or $ADMIN busy" >&2; exit 1; fi

lab_pki "$D/pki" >/dev/null
mkdir -p "$D/data/lst"
python3 -c "
for i in range(50000): open(f'$D/data/lst/k{i:07d}', 'w').close()"
lab_config "$D/pki" "$PORT" "$ADMIN" --no-crl --server "workers = 1" \
    --backend 'kind = "store"' --backend "root = \"$D/data\"" \
    --authz 'buckets = ["lst"]' --authz 'access = ["read", "list"]' >"$D/lg.toml"
"$BIN" serve --config "$D/lg.toml" >"$D/log" 2>&1 &
P=$!
PIDS+=("$P")
for _ in $(seq 100); do curl -s "http://127.0.0.1:$ADMIN/readyz" | grep -q ready && break; sleep 0.1; done
CURL="curl -s --cacert $D/pki/ca.crt --cert $D/pki/alice.crt --key $D/pki/alice.key"
U="https://127.0.0.1:$PORT/lst?list-type=2"
W=$(for t in /proc/$P/task/*; do grep -q lg-worker "$t/comm" && basename "$t"; done | head -1)
cpu() { awk '{print $14 + $15}' "/proc/$P/task/$W/stat"; }
pages() { for n in $(seq 40); do $CURL -o /dev/null "$U$1&start-after=k00$((n % 40))000"; done; }

$CURL -o /dev/null "$U"
w0=$(cpu); pages ""; w1=$(cpu)
echo "worker CPU for 40 pages of 1,000 keys: $(( (w1 - w0) * 10 )) ms"
w0=$(cpu); pages "&max-keys=1"; w1=$(cpu)
echo "worker CPU for 40 pages of 1 key:      $(( (w1 - w0) * 10 )) ms"
if [ -n "${PERF:-}" ]; then
    perf record -q -e cpu-clock -g -t "$W" -o "$D/perf.data" -- bash -c "$(declare -f pages); CURL='$CURL'; U='$U'; pages ''" 2>/dev/null
    perf report -i "$D/perf.data" --no-children --stdio 2>/dev/null | grep "%" | head -40
fi
