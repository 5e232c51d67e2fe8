#!/usr/bin/env bash
# Small-GET p99 on one worker while a neighbour stalls it (issue 11, item 4):
#   idle; HEAD of 3 fresh 1 GiB sparse objects with no stored digest (hashed whole);
#   back-to-back LIST pages of a 50k-object bucket; two 512 MiB PUTs with fsync=always.
# Also the RSS high-water mark across 5 LIST pages of a 300k-object bucket.
#
#   benches/stalls/run.sh [BIN]      # BIN defaults to target/release/lakegate
#   NICE=-10 benches/stalls/run.sh   # appliance and probe at nice -10 (a shared box)
#
# workers = 1, lab PKI and store root in a temp dir on the disk (xattrs needed),
# ports PORT (default 37443) and PORT-353 (admin); refuses to start if either is taken
# (SO_REUSEPORT would let another process share the port). Needs curl, python3.
set -eu
cd "$(dirname "$0")/../.."
. benches/lib.sh
BIN=$(realpath "${1:-target/release/lakegate}")
LG=$BIN
HERE=$(realpath benches/stalls)
PORT=${PORT:-37443}
ADMIN=$((PORT - 353))
bench_tmp D /var/tmp/lg-stalls.XXXXXX
N=${NICE:+nice -n $NICE}

lab_pki "$D/pki"
mkdir -p "$D/data/bkt" "$D/data/lst" "$D/data/big300"
head -c 4096 /dev/urandom > "$D/data/bkt/small"
head -c 512M /dev/urandom > "$D/put.bin"
python3 -c "
import sys
for b, n in (('lst', 50000), ('big300', 300000)):
    for i in range(n): open(f'$D/data/{b}/k{i:07d}', 'w').close()"
lab_config "$D/pki" "$PORT" "$ADMIN" --no-crl --server "workers = 1" --server 'drain_timeout = "8s"' \
    --backend 'kind = "store"' --backend "root = \"$D/data\"" --backend 'fsync = "always"' \
    --authz 'buckets = ["bkt", "lst", "big300"]' --authz 'access = ["read", "write", "delete", "list"]' \
    >"$D/lg.toml"
CURL="curl -s --cacert $D/pki/ca.crt --cert $D/pki/alice.crt --key $D/pki/alice.key"
U=https://127.0.0.1:$PORT

if ss -ltn | awk '{print $4}' | grep -qE ":($PORT|$ADMIN)\$"; then echo "port $PORT or $ADMIN busy" >&2; exit 1; fi
$N "$BIN" serve --config "$D/lg.toml" > "$D/log" 2>&1 &
echo $! > "$D/pid"
PIDS+=("$!")
for i in $(seq 100); do curl -s http://127.0.0.1:$ADMIN/readyz | grep -q ready && break; sleep 0.1; done

echo "binary: $BIN; load: $(cut -d' ' -f1-3 /proc/loadavg); nice: ${NICE:-0}"
probe() { $N python3 "$HERE/probe.py" "$D" "$PORT" "$@" | tr '\n' ' '; echo; }
echo "idle:                  $(probe 3)"
echo "HEAD 1 GiB unhashed:   $(probe 6 "for i in 1 2 3; do truncate -s 1G $D/data/bkt/big\$i; $CURL -I -o /dev/null -w 'HEAD %{http_code} %{time_total}s; ' $U/bkt/big\$i; rm -f $D/data/bkt/big\$i; done")"
echo "LIST 50k objects:      $(probe 6 "end=\$((\$(date +%s) + 5)); n=0; while [ \$(date +%s) -lt \$end ]; do $CURL -o /dev/null '$U/lst?list-type=2&start-after=k00'\$((n % 40))'000'; n=\$((n+1)); done; echo \"LIST x\$n; \"")"
echo "PUT 512 MiB fsync:     $(probe 8 "for i in 1 2; do $CURL -T $D/put.bin -o /dev/null -w 'PUT %{http_code} %{time_total}s; ' $U/bkt/put\$i; done")"
P=$(cat "$D/pid")
h0=$(grep VmHWM /proc/$P/status | tr -s ' ')
for i in 1 2 3 4 5; do $CURL -o /dev/null "$U/big300?list-type=2&start-after=k0$((i * 5))0000"; done
echo "LIST 300k x5, RSS high-water mark: $h0 before, $(grep VmHWM /proc/$P/status | tr -s ' ') after"
