#!/usr/bin/env bash
# One 1 GiB PUT with curl to a fresh lakegate (store on the disk, workers = 1): server
# ticks (utime+stime) for it, and the receive-path counters (ring empty, carries) after.
#   BIN=/tmp/lg-X benches/store/put-ticks.sh
set -eu
cd "$(dirname "$0")/../.."
. benches/lib.sh
LG=${BIN:-$PWD/target/release/lakegate}
bench_tmp D /tmp/lg-cc.XXXXXX
lab_pki "$D/pki"
mkdir -p "$D/data/bkt"
PORT=$(free_port); ADMIN=$(free_port)
lab_config "$D/pki" "$PORT" "$ADMIN" --no-crl --server "workers = 1" \
  --backend 'kind = "store"' --backend "root = \"$D/data\"" --backend 'fsync = "never"' --backend 'etag = "sha256"' \
  --authz 'buckets = ["bkt"]' --authz 'access = ["read", "write"]' > "$D/lg.toml"
"$LG" serve --config "$D/lg.toml" > "$D/log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do curl -s "http://127.0.0.1:$ADMIN/readyz" | grep -q ready && break; sleep 0.1; done
head -c 1G /dev/urandom > "$D/up.bin"
CURL="curl -s --cacert $D/pki/ca.crt --cert $D/pki/alice.crt --key $D/pki/alice.key"
P=$(pgrep -f "$D/lg.toml" | head -1)
t0=$(awk '{print $14+$15}' "/proc/$P/stat")
$CURL -T "$D/up.bin" -o /dev/null -w 'PUT %{http_code} %{time_total}s\n' "https://127.0.0.1:$PORT/bkt/x"
t1=$(awk '{print $14+$15}' "/proc/$P/stat")
echo "server ticks for 1 GiB PUT: $((t1 - t0))"
curl -s "http://127.0.0.1:$ADMIN/metrics" | grep -E "^lakegate_recv_(carried|carry_full|ring_empty)"
