#!/usr/bin/env bash
# lakegate forward mode: server CPU-seconds per GiB of upload and of download against
# their floors (AES-GCM + a plaintext HAProxy TCP relay of the same direction), and mTLS
# handshakes per server CPU-second (full and resumed). Prints a Markdown table with
# medians and every run.
#
#   benches/forward/run.sh                      # defaults below
#   RUNS=3 BYTES=4G FULL_N=2000 RESUMED_N=4000 HS_THREADS=2 benches/forward/run.sh
#
# Server side (lakegate, its admin thread, haproxy) on core 0; clients and sinks on
# core 1. Server CPU = utime+stime of the whole process from /proc/PID/stat (all
# threads) before and after each transfer, divided by CLK_TCK. Needs taskset,
# /usr/bin/time, haproxy (apt-get install -y haproxy), curl.
set -euo pipefail
cd "$(dirname "$0")/../.."
. benches/lib.sh

RUNS=${RUNS:-3}
BYTES=${BYTES:-4G}
FULL_N=${FULL_N:-2000}
RESUMED_N=${RESUMED_N:-4000}
HS_THREADS=${HS_THREADS:-2}
SC=0 # server core
CC=1 # client/sink core
SOURCE=$(source_rev)

LOAD0=$(cut -d" " -f1-3 /proc/loadavg)
echo "== build" >&2
cargo build --release 2>&1 | tail -1 >&2
BENCH=$(bench_exe forward)
LG=${LG:-$PWD/target/release/lakegate}
[ -x "$BENCH" ] && [ -x "$LG" ] || { echo "build failed" >&2; exit 1; }
command -v haproxy >/dev/null || { echo "haproxy missing (apt-get install -y haproxy)" >&2; exit 1; }

bench_tmp TMP /tmp/lakegate-forward.XXXXXX
GIB=$(awk -v b="$(bytes "$BYTES")" 'BEGIN { printf "%.6f", b / 1073741824 }')

echo "== lab PKI in $TMP" >&2
lab_pki "$TMP"
TLSARGS=(--ca "$TMP/ca.crt" --cert "$TMP/alice.crt" --key "$TMP/alice.key")

echo "== sinks on core $CC" >&2
taskset -c $CC "$BENCH" sink --port-file "$TMP/sink.port" >/dev/null &
SINK_PID=$!; PIDS+=($SINK_PID)
taskset -c $CC "$BENCH" sink --echo --port-file "$TMP/echo.port" >/dev/null &
ECHO_PID=$!; PIDS+=($ECHO_PID)
for f in sink echo; do for _ in $(seq 100); do [ -s "$TMP/$f.port" ] && break; sleep 0.05; done; done
SINK=$(cat "$TMP/sink.port"); ECHO=$(cat "$TMP/echo.port")

# lakegate NAME UPSTREAM_PORT -> sets LG_PID (the server), LG_TPID (/usr/bin/time), LG_PORT
start_lakegate() {
    local name=$1 up=$2 port admin
    port=$("$BENCH" free-port); admin=$("$BENCH" free-port)
    lab_config "$TMP" "$port" "$admin" --server "workers = 1" --server "cores = [$SC]" \
        --backend 'kind = "forward"' --backend "upstream = \"127.0.0.1:$up\"" >"$TMP/$name.toml"
    taskset -c $SC /usr/bin/time -v -o "$TMP/$name.time" "$LG" serve --config "$TMP/$name.toml" 2>"$TMP/$name.log" &
    LG_TPID=$!; PIDS+=($LG_TPID)
    LG_PID=""
    for _ in $(seq 100); do LG_PID=$(pgrep -P "$LG_TPID" || true); [ -n "$LG_PID" ] && break; sleep 0.05; done
    PIDS+=($LG_PID)
    "$BENCH" wait-http --port "$admin" --path /readyz
    LG_PORT=$port; LG_ADMIN=$admin
}
stop_lakegate() { # PID TPID
    kill -TERM "$1"; wait "$2" || true
}

echo "== lakegate (upload) and haproxy on core $SC" >&2
start_lakegate upload "$SINK"
UP_PID=$LG_PID; UP_TPID=$LG_TPID; UP_PORT=$LG_PORT
HP_PORT=$("$BENCH" free-port)
cat >"$TMP/haproxy.cfg" <<CFG
global
    nbthread 1
    cpu-map 1/1 $SC
    maxconn 1000
defaults
    mode tcp
    timeout connect 5s
    timeout client 120s
    timeout server 120s
frontend fe
    bind 127.0.0.1:$HP_PORT
    default_backend be
backend be
    server sink 127.0.0.1:$SINK
CFG
taskset -c $SC haproxy -db -f "$TMP/haproxy.cfg" >"$TMP/haproxy.log" 2>&1 &
HP_PID=$!; PIDS+=($HP_PID)
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$HP_PORT) 2>/dev/null && break; sleep 0.05; done
# that probe connection reaches the sink and closes at once; let it settle
sleep 0.5

# upload PID ARGS... -> "cpu_s_per_gib user sys gib_per_s suite"
upload() {
    local pid=$1 u0 s0 u1 s1 su0 ss0 su1 ss1 out; shift
    read -r u0 s0 < <(cpu_of "$pid"); read -r su0 ss0 < <(cpu_of "$SINK_PID")
    out=$(taskset -c $CC "$BENCH" upload --bytes "$BYTES" "$@")
    read -r u1 s1 < <(cpu_of "$pid"); read -r su1 ss1 < <(cpu_of "$SINK_PID")
    echo "$(calc "($u1 + $s1 - $u0 - $s0) / $GIB") $(calc "($u1 - $u0) / $GIB") $(calc "($s1 - $s0) / $GIB") $(kv "$out" gib_per_s) $(kv "$out" suite) $(calc "($su1 + $ss1 - $su0 - $ss0) / $GIB")"
}

declare -a A128 A256 LG128 LG256 HP RATIO128 RATIO256 LG128_RAW LG256_RAW HP_RAW
for i in $(seq "$RUNS"); do
    echo "== round $i/$RUNS: uploads of $BYTES" >&2
    f=$(taskset -c $SC "$BENCH" aead-floor --bytes "$BYTES" --alg aes128)
    A128+=("$(kv "$f" open_cpu_s_per_gib)")
    echo "   aead-floor aes128: $f" >&2
    r=$(upload "$UP_PID" --connect "127.0.0.1:$UP_PORT" "${TLSARGS[@]}" --suite aes128)
    LG128+=("${r%% *}"); LG128_RAW+=("$r"); echo "   lakegate aes128: cpu/GiB user/GiB sys/GiB GiB/s suite sinkcpu/GiB = $r" >&2
    r=$(upload "$HP_PID" --connect "127.0.0.1:$HP_PORT")
    HP+=("${r%% *}"); HP_RAW+=("$r"); echo "   haproxy tcp:     $r" >&2
    f=$(taskset -c $SC "$BENCH" aead-floor --bytes "$BYTES" --alg aes256)
    A256+=("$(kv "$f" open_cpu_s_per_gib)")
    echo "   aead-floor aes256: $f" >&2
    r=$(upload "$UP_PID" --connect "127.0.0.1:$UP_PORT" "${TLSARGS[@]}" --suite any)
    LG256+=("${r%% *}"); LG256_RAW+=("$r"); echo "   lakegate default suite: $r" >&2
    RATIO128+=("$(calc "${LG128[-1]} / (${A128[-1]} + ${HP[-1]})")")
    RATIO256+=("$(calc "${LG256[-1]} / (${A256[-1]} + ${HP[-1]})")")
done
HWM=$(awk '/VmHWM/ { print $2 }' "/proc/$UP_PID/status")
stop_lakegate "$UP_PID" "$UP_TPID"
RSS=$(awk -F: '/Maximum resident set size/ { gsub(/ /, "", $2); print $2 }' "$TMP/upload.time")
kill "$HP_PID"; wait "$HP_PID" 2>/dev/null || true

echo "== downloads of $BYTES: lakegate and haproxy on core $SC, a source upstream on core $CC" >&2
taskset -c $CC "$BENCH" source --bytes "$(bytes "$BYTES")" --port-file "$TMP/source.port" >/dev/null &
PIDS+=($!)
for _ in $(seq 100); do [ -s "$TMP/source.port" ] && break; sleep 0.05; done
SRC=$(cat "$TMP/source.port")
start_lakegate download "$SRC"
DN_PID=$LG_PID; DN_TPID=$LG_TPID; DN_PORT=$LG_PORT
HPD_PORT=$("$BENCH" free-port)
sed "s/127.0.0.1:$HP_PORT\$/127.0.0.1:$HPD_PORT/; s/127.0.0.1:$SINK\$/127.0.0.1:$SRC/" "$TMP/haproxy.cfg" >"$TMP/haproxy-dn.cfg"
taskset -c $SC haproxy -db -f "$TMP/haproxy-dn.cfg" >"$TMP/haproxy-dn.log" 2>&1 &
HPD_PID=$!; PIDS+=($HPD_PID)
# Not probed by connecting: every connection gets the source's bytes.
for _ in $(seq 100); do ss -ltn | grep -q "127.0.0.1:$HPD_PORT " && break; sleep 0.05; done

# download PID ARGS... -> "cpu_s_per_gib user sys gib_per_s suite"
download() {
    local pid=$1 u0 s0 u1 s1 out; shift
    read -r u0 s0 < <(cpu_of "$pid")
    out=$(taskset -c $CC "$BENCH" download "$@")
    read -r u1 s1 < <(cpu_of "$pid")
    [ "$(kv "$out" bytes)" = "$(bytes "$BYTES")" ] || { echo "short download: $out" >&2; exit 1; }
    echo "$(calc "($u1 + $s1 - $u0 - $s0) / $GIB") $(calc "($u1 - $u0) / $GIB") $(calc "($s1 - $s0) / $GIB") $(kv "$out" gib_per_s) $(kv "$out" suite)"
}
declare -a DN DN_RAW HPD HPD_RAW RATIO_DN
for i in $(seq "$RUNS"); do
    echo "== round $i/$RUNS: downloads of $BYTES" >&2
    r=$(download "$DN_PID" --connect "127.0.0.1:$DN_PORT" "${TLSARGS[@]}" --suite aes128)
    DN+=("${r%% *}"); DN_RAW+=("$r"); echo "   lakegate aes128: cpu/GiB user/GiB sys/GiB GiB/s suite = $r" >&2
    r=$(download "$HPD_PID" --connect "127.0.0.1:$HPD_PORT")
    HPD+=("${r%% *}"); HPD_RAW+=("$r"); echo "   haproxy tcp:     $r" >&2
    RATIO_DN+=("$(calc "${DN[-1]} / (${A128[$((i - 1))]} + ${HPD[-1]})")")
done
DN_HWM=$(awk '/VmHWM/ { print $2 }' "/proc/$DN_PID/status")
stop_lakegate "$DN_PID" "$DN_TPID"
kill "$HPD_PID"; wait "$HPD_PID" 2>/dev/null || true

echo "== lakegate (handshakes) on core $SC, echo upstream" >&2
start_lakegate hs "$ECHO"
HS_PID=$LG_PID; HS_TPID=$LG_TPID; HS_PORT=$LG_PORT; HS_ADMIN=$LG_ADMIN
# handshake N [--resume] -> "hs_per_cpu_s ms_per_hs full resumed per_s kx"
handshake() {
    local n=$1 u0 s0 u1 s1 out d; shift
    read -r u0 s0 < <(cpu_of "$HS_PID")
    out=$(taskset -c $CC "$BENCH" handshake --connect "127.0.0.1:$HS_PORT" "${TLSARGS[@]}" -n "$n" --threads "$HS_THREADS" "$@")
    read -r u1 s1 < <(cpu_of "$HS_PID")
    d=$(calc "$u1 + $s1 - $u0 - $s0" 2)
    echo "$(calc "$n / $d" 0) $(calc "$d * 1000 / $n" 3) $(kv "$out" full) $(kv "$out" resumed) $(kv "$out" per_s) $(kv "$out" kx) $(kv "$out" suite)"
}
declare -a FULL RES FULL_RAW RES_RAW
for i in $(seq "$RUNS"); do
    echo "== round $i/$RUNS: handshakes" >&2
    r=$(handshake "$FULL_N"); FULL+=("${r%% *}"); FULL_RAW+=("$r")
    echo "   full:    hs/cpu-s ms/hs full resumed hs/s kx suite = $r" >&2
    r=$(handshake "$RESUMED_N" --resume); RES+=("${r%% *}"); RES_RAW+=("$r")
    echo "   resumed: $r" >&2
done
SESS=$(curl -s "http://127.0.0.1:$HS_ADMIN/metrics" | grep '^lakegate_tls_sessions_total' || true)
stop_lakegate "$HS_PID" "$HS_TPID"


# ---- report ----
M_LG=$(median "${LG128[@]}"); M_A=$(median "${A128[@]}"); M_HP=$(median "${HP[@]}")
M_LG256=$(median "${LG256[@]}"); M_A256=$(median "${A256[@]}")
cat <<EOF

## lakegate forward mode — $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), kernel $(uname -r)
source: $SOURCE; upload $BYTES per run; $RUNS runs; server core $SC, client+sink core $CC; TCP congestion control $(cat /proc/sys/net/ipv4/tcp_congestion_control); load average at start $LOAD0, at end $(cut -d" " -f1-3 /proc/loadavg).

| measurement | median | runs |
|---|---|---|
| (1) lakegate upload, TLS13_AES_128_GCM_SHA256, server CPU-s/GiB | $M_LG | ${LG128[*]} |
|   … of which user / sys CPU-s/GiB | $(median $(col 2 "${LG128_RAW[@]}")) / $(median $(col 3 "${LG128_RAW[@]}")) | $(col 2 "${LG128_RAW[@]}" | xargs) / $(col 3 "${LG128_RAW[@]}" | xargs) |
|   … client-observed throughput GiB/s | $(median $(col 4 "${LG128_RAW[@]}")) | $(col 4 "${LG128_RAW[@]}" | xargs) |
| (2a) aws-lc-rs AES-128-GCM open_in_place, 16 KiB records, CPU-s/GiB | $M_A | ${A128[*]} |
| (2b) haproxy mode tcp (no TLS), server CPU-s/GiB | $M_HP | ${HP[*]} |
|   … of which user / sys CPU-s/GiB | $(median $(col 2 "${HP_RAW[@]}")) / $(median $(col 3 "${HP_RAW[@]}")) | $(col 2 "${HP_RAW[@]}" | xargs) / $(col 3 "${HP_RAW[@]}" | xargs) |
|   … client-observed throughput GiB/s | $(median $(col 4 "${HP_RAW[@]}")) | $(col 4 "${HP_RAW[@]}" | xargs) |
| **lakegate / (2a + 2b)**, per round then median (aim ≤ 1.15, issue 11) | **$(median "${RATIO128[@]}")** | ${RATIO128[*]} |
| lakegate − (2a + 2b), CPU-s/GiB (medians) | $(calc "$M_LG - $M_A - $M_HP") | |
| extra: lakegate, server-preferred suite ($(col 5 "${LG256_RAW[@]}" | sort -u | xargs)), CPU-s/GiB | $M_LG256 | ${LG256[*]} |
| extra: AES-256-GCM open_in_place CPU-s/GiB | $M_A256 | ${A256[*]} |
| extra: lakegate(default suite) / (AES-256 open + haproxy) | $(median "${RATIO256[@]}") | ${RATIO256[*]} |
| (4) lakegate download, TLS13_AES_128_GCM_SHA256, server CPU-s/GiB | $(median "${DN[@]}") | ${DN[*]} |
|   … of which user / sys CPU-s/GiB | $(median $(col 2 "${DN_RAW[@]}")) / $(median $(col 3 "${DN_RAW[@]}")) | $(col 2 "${DN_RAW[@]}" | xargs) / $(col 3 "${DN_RAW[@]}" | xargs) |
|   … client-observed throughput GiB/s | $(median $(col 4 "${DN_RAW[@]}")) | $(col 4 "${DN_RAW[@]}" | xargs) |
| (4b) haproxy mode tcp download (no TLS), server CPU-s/GiB | $(median "${HPD[@]}") | ${HPD[*]} |
|   … of which user / sys CPU-s/GiB | $(median $(col 2 "${HPD_RAW[@]}")) / $(median $(col 3 "${HPD_RAW[@]}")) | $(col 2 "${HPD_RAW[@]}" | xargs) / $(col 3 "${HPD_RAW[@]}" | xargs) |
| **lakegate download / (2a + 4b)**, per round then median (aim ≤ 1.15, issue 11) | **$(median "${RATIO_DN[@]}")** | ${RATIO_DN[*]} |
| lakegate download peak RSS (VmHWM) | ${DN_HWM} KiB | |
| sink CPU-s/GiB (core $CC), lakegate runs / haproxy runs | $(median $(col 6 "${LG128_RAW[@]}")) / $(median $(col 6 "${HP_RAW[@]}")) | |
| lakegate peak RSS over all uploads (/usr/bin/time -v; VmHWM) | ${RSS} KiB; ${HWM} KiB | |
| (3) full mTLS handshakes (ECDSA P-256, $(col 6 "${FULL_RAW[@]}" | sort -u | xargs)) per server CPU-s, N=$FULL_N, $HS_THREADS client threads | $(median "${FULL[@]}") | ${FULL[*]} |
|   … server CPU ms per connection | $(median $(col 2 "${FULL_RAW[@]}")) | $(col 2 "${FULL_RAW[@]}" | xargs) |
|   … full / resumed as seen by client | | $(for r in "${FULL_RAW[@]}"; do set -- $r; echo -n "$3/$4 "; done) |
| (3) resumed (TLS 1.3 ticket) handshakes per server CPU-s, N=$RESUMED_N | $(median "${RES[@]}") | ${RES[*]} |
|   … server CPU ms per connection | $(median $(col 2 "${RES_RAW[@]}")) | $(col 2 "${RES_RAW[@]}" | xargs) |
|   … full / resumed as seen by client | | $(for r in "${RES_RAW[@]}"; do set -- $r; echo -n "$3/$4 "; done) |
| resumed / full handshakes per CPU-s | $(calc "$(median "${RES[@]}") / $(median "${FULL[@]}")" 2) | |

Server-side session counters after the handshake runs:
\`\`\`
$SESS
\`\`\`
EOF
