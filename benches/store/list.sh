#!/usr/bin/env bash
# A whole bucket listed page by page (ListObjectsV2, 1,000 keys a page, continuation
# tokens) as rclone, s3fs or `aws s3 ls --recursive` do: wall time, the server's CPU
# (all its threads: the LIST runs on the blocking pool) and the time of the first and
# the last page, for each binary given, in one run, interleaved ROUNDS times.
#
#   N=200000 ROUNDS=3 benches/store/list.sh OLD_BIN NEW_BIN
#
# The N objects are empty files made directly in one flat bucket folder (under
# /var/tmp), which then rests 2 s so that a kept-folder cache may keep it. workers = 1,
# ports PORT (default 38453) and PORT-353.
set -eu
cd "$(dirname "$0")/../.."
. benches/lib.sh
[ $# -ge 1 ] || die "usage: N=… ROUNDS=… $0 BIN [BIN…]"
N=${N:-200000}
ROUNDS=${ROUNDS:-3}
PORT=${PORT:-38453}
ADMIN=$((PORT - 353))
BINS=()
for b in "$@"; do BINS+=("$(realpath "$b")"); done
LG=${BINS[0]}
bench_tmp D /var/tmp/lg-list.XXXXXX
if ss -ltn | awk '{print $4}' | grep -qE ":($PORT|$ADMIN)\$"; then die "port $PORT or $ADMIN busy"; fi

lab_pki "$D/pki" >/dev/null
mkdir -p "$D/data/lst"
python3 -c "
for i in range($N): open(f'$D/data/lst/k{i:08d}', 'w').close()"
sleep 2
lab_config "$D/pki" "$PORT" "$ADMIN" --no-crl --server "workers = 1" \
    --backend 'kind = "store"' --backend "root = \"$D/data\"" --backend 'fsync = "never"' \
    --authz 'buckets = ["lst"]' --authz 'access = ["read", "list"]' >"$D/lg.toml"

cat >"$D/lister.py" <<'EOF'
# Lists the bucket to its end over one keep-alive mTLS connection; prints
# "pages keys wall_s first_page_ms last_page_ms".
import http.client, re, ssl, sys, time, urllib.parse
d, port = sys.argv[1], int(sys.argv[2])
ctx = ssl.create_default_context(cafile=f"{d}/pki/ca.crt")
ctx.load_cert_chain(f"{d}/pki/alice.crt", f"{d}/pki/alice.key")
c = http.client.HTTPSConnection("127.0.0.1", port, context=ctx)
token, pages, keys, times = None, 0, 0, []
t0 = time.monotonic()
while True:
    q = "list-type=2&max-keys=1000"
    if token:
        q += "&continuation-token=" + urllib.parse.quote(token, safe="")
    t = time.monotonic()
    c.request("GET", "/lst?" + q)
    r = c.getresponse()
    body = r.read().decode()
    times.append((time.monotonic() - t) * 1e3)
    assert r.status == 200, (r.status, body[:300])
    pages += 1
    keys += body.count("<Key>")
    m = re.search(r"<NextContinuationToken>([^<]*)</NextContinuationToken>", body)
    if "<IsTruncated>true</IsTruncated>" not in body:
        break
    token = m.group(1)
print(pages, keys, round(time.monotonic() - t0, 3), round(times[0], 2), round(times[-1], 2))
EOF

# run BIN -> "wall_s server_cpu_s first_ms last_ms pages rss_mib" (and checks every key
# came once); the RSS is the server's after the listing, the kept folder included.
run() {
    local bin=$1 p t0 t1 out rss_kib
    "$bin" serve --config "$D/lg.toml" >"$D/log" 2>&1 &
    p=$!
    PIDS+=("$p")
    for _ in $(seq 100); do curl -s "http://127.0.0.1:$ADMIN/readyz" | grep -q ready && break; sleep 0.1; done
    t0=$(cpu_total "$p")
    out=$(python3 "$D/lister.py" "$D" "$PORT")
    t1=$(cpu_total "$p")
    rss_kib=$(rss "$p")
    kill "$p"
    wait "$p" 2>/dev/null || true
    read -r pages keys wall first last <<<"$out"
    [ "$keys" = "$N" ] || die "$bin listed $keys keys of $N"
    echo "$wall $(calc "$t1 - $t0" 2) $first $last $pages $(calc "$rss_kib / 1024" 1)"
}

echo "N=$N ROUNDS=$ROUNDS; $(nproc) cores, load average $(cut -d" " -f1-3 /proc/loadavg)"
echo "| round | binary | pages | wall s | server CPU s | first page ms | last page ms | server RSS after, MiB |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- |"
declare -A CPU
RATIOS=()
for r in $(seq "$ROUNDS"); do
    for b in "${BINS[@]}"; do
        read -r wall cpu first last pages rss_mib <<<"$(run "$b")"
        CPU[$r-$b]=$cpu
        echo "| $r | ${b##*/} | $pages | $wall | $cpu | $first | $last | $rss_mib |"
    done
    if [ ${#BINS[@]} -ge 2 ]; then
        RATIOS+=("$(calc "${CPU[$r-${BINS[1]}]} / ${CPU[$r-${BINS[0]}]}" 4)")
        echo "| $r | CPU ${BINS[1]##*/} ÷ ${BINS[0]##*/} | | | ${RATIOS[-1]} | | | |"
    fi
done
[ ${#RATIOS[@]} -gt 0 ] && echo "median server CPU ratio ${BINS[1]##*/} ÷ ${BINS[0]##*/}: $(median "${RATIOS[@]}") (rounds: ${RATIOS[*]})"
