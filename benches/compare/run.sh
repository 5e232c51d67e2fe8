#!/usr/bin/env bash
# Side-by-side: lakegate vs HAProxy, stunnel and nginx (stream + ssl_verify_client) as
# mTLS terminators in front of the same local plaintext sink, same PKI, same pinned
# server core, same client (`lakegate load`). See benches/compare/README.md.
#
#   benches/compare/run.sh                     # defaults below, ~25 min on 2 cores
#   RUNS=5 BYTES=4GiB IDLE_N=9000 benches/compare/run.sh
#   ONLY=handshakes OUT=/tmp/hs benches/compare/run.sh   # (b) and (c) only, ~10 min
#
# Server processes on core $SC, the client and every upstream on core $CC. Server CPU =
# utime+stime from /proc/PID/stat of the server process and its children (nginx master
# + worker; all threads) before and after each measurement, divided by CLK_TCK. Raw
# samples go to $OUT/raw.tsv; benches/compare/report.py turns them into medians and
# pair-by-pair ratios ($OUT/results.json, $OUT/results-DATE.md); the compare-chart bench
# target draws $OUT/chart.svg. Installs haproxy, stunnel4, nginx + libnginx-mod-stream
# (apt-get) if missing.
set -euo pipefail
cd "$(dirname "$0")/../.."
. benches/lib.sh
CALC_DIGITS=4

RUNS=${RUNS:-3}
BYTES=${BYTES:-2GiB}            # per upload / download measurement (one connection)
HS_DURATION=${HS_DURATION:-5s}  # per handshake-rate measurement
HS_CONNS=${HS_CONNS:-16}        # client connection slots (threads) for handshakes
LAT_DURATION=${LAT_DURATION:-10s}
IDLE_N=${IDLE_N:-9000}          # idle connections (fd cap: see README)
ONLY=${ONLY:-}                   # "handshakes": (b) and (c) only
FLEET=${FLEET:-5000}            # client certificates for the "fresh" handshakes (> 4,096, lakegate's chain memo)
PEERS=${PEERS:-lakegate haproxy stunnel nginx}
KEYS=${KEYS:-ecdsa rsa}
OUT=${OUT:-benches/compare/results}
SC=${SC:-0} # server core
CC=${CC:-1} # client + upstream core
DATE=$(date -u +%F)
CMDLINE="ONLY=$ONLY RUNS=$RUNS BYTES=$BYTES HS_DURATION=$HS_DURATION HS_CONNS=$HS_CONNS LAT_DURATION=$LAT_DURATION IDLE_N=$IDLE_N FLEET=$FLEET PEERS='$PEERS' KEYS='$KEYS' benches/compare/run.sh"
case $ONLY in "" | handshakes) ;; *) echo "ONLY=$ONLY: only \"handshakes\" (or empty: everything)" >&2; exit 1 ;; esac
# One worker remembers 4,096 chains: a smaller fleet would let the memo answer.
[ "$FLEET" -gt 4096 ] 2>/dev/null || { echo "FLEET=$FLEET: must be more than 4096 (lakegate's chains per worker)" >&2; exit 1; }
read -r -a PEER_LIST <<<"$PEERS"
read -r -a KEY_LIST <<<"$KEYS"

# ---- packages -------------------------------------------------------------------------
missing=()
command -v haproxy >/dev/null || missing+=(haproxy)
command -v stunnel4 >/dev/null || missing+=(stunnel4)
command -v nginx >/dev/null || missing+=(nginx)
[ -e /usr/lib/nginx/modules/ngx_stream_module.so ] || missing+=(libnginx-mod-stream)
command -v python3 >/dev/null || missing+=(python3)
if [ ${#missing[@]} -gt 0 ]; then
    log "== installing ${missing[*]}"
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# The Debian packages start system services; this benchmark runs its own instances.

log "== build"
cargo build --release 2>&1 | tail -1 >&2
FWD=$(bench_exe forward)
CHART=$(bench_exe compare-chart)
LG=${LG:-$PWD/target/release/lakegate}
IDLE=$PWD/benches/compare/idle.py
for x in "$FWD" "$CHART" "$LG"; do [ -x "$x" ] || { log "build failed ($x)"; exit 1; }; done

bench_tmp TMP /tmp/lakegate-compare.XXXXXX
chmod 755 "$TMP"
RAW=$TMP/raw.tsv
META=$TMP/meta.tsv
: >"$RAW"
: >"$META"
meta() { printf '%s\t%s\n' "$1" "$2" >>"$META"; }
# raw RUN FIGURE SERIES KEY VALUE [NOTE]
raw() { printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" "${6:-}" >>"$RAW"; }

# ---- process helpers -------------------------------------------------------------------
# CPU ticks (utime + stime, all threads) of a process and its descendants (nginx master +
# worker)
ticks() {
    local sum=0 p v
    for p in $(tree "$1"); do
        v=$(sed 's/^.*) //' "/proc/$p/stat" 2>/dev/null | awk '{ print $12 + $13 }') || v=0
        sum=$((sum + ${v:-0}))
    done
    echo "$sum"
}
# VmRSS in KiB of a process and its descendants
tree_rss() {
    local sum=0 p v
    for p in $(tree "$1"); do
        v=$(rss "$p" 2>/dev/null) || v=0
        sum=$((sum + ${v:-0}))
    done
    echo "$sum"
}
jget() { python3 -c 'import json, sys; d = json.load(open(sys.argv[1])); print(eval(sys.argv[2], {}, {"d": d}))' "$1" "$2"; }

# ---- PKI: one CA + server key per key type, the same client name in each --------------
# fleet.crt: $FLEET certificates for alice's key, each with its own serial and signature,
# for the "fresh" full handshakes (a client the server has not seen lately, every time).
declare -A PKI
for k in "${KEY_LIST[@]}"; do
    case $k in ecdsa) kt=ecdsa-p256 ;; rsa) kt=rsa2048 ;; *) log "unknown key type $k"; exit 1 ;; esac
    d=$TMP/pki-$k
    lab_pki "$d" --key-type "$kt"
    python3 benches/compare/client_certs.py "$d/ca.crt" "$d/ca.key" "$d/alice.crt" "$d/alice.key" "$FLEET" "$d/fleet.crt"
    cat "$d/server.crt" "$d/server.key" >"$d/haproxy.pem"
    PKI[$k]=$d
done

# ---- upstreams on the client core ------------------------------------------------------
taskset -c "$CC" "$FWD" sink --port-file "$TMP/sink.port" >/dev/null &
PIDS+=($!)
taskset -c "$CC" "$FWD" source --bytes "$BYTES" --port-file "$TMP/source.port" >/dev/null &
PIDS+=($!)
taskset -c "$CC" python3 "$IDLE" sink --port-file "$TMP/idlesink.port" --count-file "$TMP/idlesink.count" &
PIDS+=($!)
wait_file "$TMP/sink.port"; wait_file "$TMP/source.port"; wait_file "$TMP/idlesink.port"
SINK=$(cat "$TMP/sink.port"); SOURCE=$(cat "$TMP/source.port"); IDLESINK=$(cat "$TMP/idlesink.port")
wait_file "$TMP/idlesink.count"

# ---- servers ---------------------------------------------------------------------------
# start PEER NAME KEY UPSTREAM_PORT -> sets S_PID, S_PORT; the instance is named NAME
start() {
    local peer=$1 name=$2 k=$3 up=$4 d=${PKI[$3]} port admin dir=$TMP/$2
    port=$(free_port)
    mkdir -p "$dir"
    case $peer in
    lakegate)
        admin=$(free_port)
        lab_config "$d" "$port" "$admin" --server "workers = 1" --server "cores = [$SC]" \
            --server 'idle_timeout = "900s"' \
            --backend 'kind = "forward"' --backend "upstream = \"127.0.0.1:$up\"" >"$dir/lakegate.toml"
        taskset -c "$SC" "$LG" serve --config "$dir/lakegate.toml" 2>"$dir/log" &
        S_PID=$!
        "$FWD" wait-http --port "$admin" --path /readyz
        ;;
    haproxy | plain)
        local bind="ssl crt $d/haproxy.pem ca-file $d/ca.crt crl-file $d/crl.pem verify required ssl-min-ver TLSv1.3"
        [ "$peer" = plain ] && bind=""
        cat >"$dir/haproxy.cfg" <<CFG
global
    nbthread 1
    cpu-map 1/1 $SC
    maxconn 9600
defaults
    mode tcp
    timeout connect 5s
    timeout client 900s
    timeout server 900s
frontend fe
    bind 127.0.0.1:$port $bind
    default_backend be
backend be
    server up 127.0.0.1:$up
CFG
        taskset -c "$SC" haproxy -db -f "$dir/haproxy.cfg" >"$dir/log" 2>&1 &
        S_PID=$!
        ;;
    stunnel)
        cat >"$dir/stunnel.conf" <<CONF
foreground = yes
pid =
syslog = no
debug = 3
output = $dir/log

[lab]
accept = 127.0.0.1:$port
connect = 127.0.0.1:$up
cert = $d/server.crt
key = $d/server.key
CAfile = $d/ca.crt
CRLfile = $d/crl.pem
requireCert = yes
verifyChain = yes
sslVersionMin = TLSv1.3
TIMEOUTidle = 900
CONF
        taskset -c "$SC" stunnel4 "$dir/stunnel.conf" >>"$dir/log" 2>&1 &
        S_PID=$!
        ;;
    nginx)
        cat >"$dir/nginx.conf" <<CONF
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
daemon off;
master_process on;
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/log error;
worker_rlimit_nofile 20000;
events { worker_connections 19500; }
stream {
    server {
        listen 127.0.0.1:$port ssl;
        ssl_certificate $d/server.crt;
        ssl_certificate_key $d/server.key;
        ssl_client_certificate $d/ca.crt;
        ssl_crl $d/crl.pem;
        ssl_verify_client on;
        ssl_protocols TLSv1.3;
        proxy_pass 127.0.0.1:$up;
        proxy_timeout 900s;
    }
}
CONF
        taskset -c "$SC" nginx -p "$dir/" -c "$dir/nginx.conf" -e "$dir/log" -g "user root;" >"$dir/stdout" 2>&1 &
        S_PID=$!
        ;;
    *) log "unknown peer $peer"; exit 1 ;;
    esac
    PIDS+=("$S_PID")
    S_PORT=$port
    wait_port "$port" || { cat "$dir/log" >&2; exit 1; }
    sleep 0.3
    kill -0 "$S_PID" 2>/dev/null || { log "$name died"; cat "$dir/log" >&2; exit 1; }
}
stop() { kill -TERM "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

# LG_CLIENT=fleet: present fleet.crt's certificates in turn (with --rotate-certs)
TLS_OF() { local d=${PKI[$1]}; echo "--ca $d/ca.crt --cert $d/${LG_CLIENT:-alice}.crt --key $d/alice.key"; }

# load NAME PID PORT KEY OUT.json ARGS... -> "server_cpu_s" (load's report in OUT.json)
load() {
    local pid=$2 port=$3 k=$4 out=$5 t0 t1 tls; shift 5
    read -r -a tls <<<"$(TLS_OF "$k")"
    t0=$(ticks "$pid")
    taskset -c "$CC" "$LG" load --target "127.0.0.1:$port" "${tls[@]}" --backend forward \
        --cores "$CC" --no-progress --json "$out" "$@" >"$out.txt" 2>&1 || { log "load failed:"; cat "$out.txt" >&2; return 1; }
    t1=$(ticks "$pid")
    calc "($t1 - $t0) / $TCK" 2
}

# ---- instances -------------------------------------------------------------------------
declare -A HS_PID HS_PORT DN_PID DN_PORT FROM
log "== servers on core $SC (handshakes + uploads: upstream = discard sink; downloads: upstream = source)"
for k in "${KEY_LIST[@]}"; do
    for p in "${PEER_LIST[@]}"; do
        start "$p" "$p-$k" "$k" "$SINK"; HS_PID[$p-$k]=$S_PID; HS_PORT[$p-$k]=$S_PORT
    done
done
BK=${KEY_LIST[0]} # bulk and idle figures use the first key type (the record layer does not depend on it)
for p in "${PEER_LIST[@]}"; do
    start "$p" "$p-$BK-dn" "$BK" "$SOURCE"; DN_PID[$p]=$S_PID; DN_PORT[$p]=$S_PORT
done
start plain plain-up "$BK" "$SINK"; PLAIN_UP_PID=$S_PID; PLAIN_UP_PORT=$S_PORT
start plain plain-dn "$BK" "$SOURCE"; PLAIN_DN_PID=$S_PID; PLAIN_DN_PORT=$S_PORT
sleep 1

# ---- sanity: every peer requires a client certificate ----------------------------------
log "== sanity: with and without a client certificate"
for k in "${KEY_LIST[@]}"; do
    d=${PKI[$k]}
    for p in "${PEER_LIST[@]}"; do
        port=${HS_PORT[$p-$k]}
        with=$(taskset -c "$CC" python3 "$IDLE" probe --port "$port" --ca "$d/ca.crt" --cert "$d/alice.crt" --key "$d/alice.key")
        without=$(taskset -c "$CC" python3 "$IDLE" probe --port "$port" --ca "$d/ca.crt")
        log "   $p $k: with cert: $with; without: $without"
        case $with in accepted*) ;; *) log "$p ($k) refused a valid client"; exit 1 ;; esac
        case $without in refused*) ;; *) log "$p ($k) ACCEPTED a client without a certificate"; exit 1 ;; esac
        meta "probe.$p.$k" "with client cert: $with; without: $without"
    done
done
SUITE=$(taskset -c "$CC" python3 "$IDLE" probe --port "${HS_PORT[lakegate-$BK]:-${HS_PORT[${PEER_LIST[0]}-$BK]}}" --ca "${PKI[$BK]}/ca.crt" --cert "${PKI[$BK]}/alice.crt" --key "${PKI[$BK]}/alice.key" | awk '{ print $3 }')
case $SUITE in *AES_128*) ALG=aes128 ;; *) ALG=aes256 ;; esac
meta suite "$SUITE"

LOAD0=$(cut -d" " -f1-3 /proc/loadavg)
T_START=$(date +%s)
rotate() { local r=$1; shift; local a=("$@") n=$#; local i; for i in $(seq 0 $((n - 1))); do echo "${a[$(((i + r) % n))]}"; done; }

for run in $(seq "$RUNS"); do
    mapfile -t ORDER < <(rotate "$((run - 1))" "${PEER_LIST[@]}")
    log "== run $run/$RUNS (order: ${ORDER[*]}; load average $(cut -d" " -f1-3 /proc/loadavg))"
    raw "$run" loadavg all - "$(cut -d" " -f1 /proc/loadavg)"

    # (b) handshakes per server CPU-second, full and resumed; (c) p99 at 50% of lakegate's peak
    for k in "${KEY_LIST[@]}"; do
        # full: one client certificate on every connection, as a job's many connections
        # present; fresh: a certificate the server has not seen lately on each (a fleet
        # of distinct clients; lakegate's chain memo cannot help); resumed: tickets.
        for mode in full fresh resumed; do
            for p in "${ORDER[@]}"; do
                j=$TMP/hs-$run-$k-$mode-$p.json
                extra=(); client=alice
                [ "$mode" = resumed ] && extra=(--resume)
                # Each server instance lives through all runs and remembers: start past
                # where its last fresh measurement ended (attempts, plus the handshakes
                # cut at the stop), at the certificates it saw longest ago.
                [ "$mode" = fresh ] && { extra=(--rotate-certs --rotate-from "${FROM[$p-$k]:-0}"); client=fleet; }
                cpu=$(LG_CLIENT=$client load "$p" "${HS_PID[$p-$k]}" "${HS_PORT[$p-$k]}" "$k" "$j" --mode handshake \
                    --connections "$HS_CONNS" --duration "$HS_DURATION" "${extra[@]}")
                read -r full res ops errs secs < <(jget "$j" '"%d %d %s %d %s" % (d["handshakes"]["full"], d["handshakes"]["resumed"], d["ops_per_s"], d["errors_total"], d["duration_s"])')
                n=$((full + res))
                [ "$mode" = fresh ] && FROM[$p-$k]=$(( (${FROM[$p-$k]:-0} + n + errs + HS_CONNS) % FLEET ))
                note="full=$full resumed=$res errors=$errs ops/s=$ops server_cpu_s=$cpu server_core_busy=$(calc "$cpu / $secs * 100" 0)%"
                if [ "$mode" = resumed ] && [ "$n" -gt 0 ] && [ $((res * 10)) -lt $((n * 9)) ]; then
                    raw "$run" "hs_resumed" "$p" "$k" NA "no resumption: $note"
                elif [ "$mode" = fresh ] && [ $((errs * 100)) -gt "$n" ]; then
                    # More than 1 % failed: the server refuses some of the fleet's certificates.
                    raw "$run" "hs_fresh" "$p" "$k" NA "fleet certificates refused: $note"
                else
                    raw "$run" "hs_$mode" "$p" "$k" "$(calc "$n / $cpu" 1)" "$note"
                fi
                [ "$mode" = full ] && raw "$run" "hs_full_rate" "$p" "$k" "$ops" "$note"
                log "   $k $mode $p: $n handshakes, $(calc "$n / $cpu" 0)/CPU-s ($note)"
            done
        done
        peak=$(jget "$TMP/hs-$run-$k-full-lakegate.json" 'd["ops_per_s"]' 2>/dev/null || echo "")
        if [ -z "$peak" ]; then log "   (c) needs lakegate in PEERS"; continue; fi
        rate=$(calc "$peak / 2" 0)
        raw "$run" "lat_rate" lakegate "$k" "$rate"
        for p in "${ORDER[@]}"; do
            j=$TMP/lat-$run-$k-$p.json
            cpu=$(load "$p" "${HS_PID[$p-$k]}" "${HS_PORT[$p-$k]}" "$k" "$j" --mode handshake \
                --connections "$HS_CONNS" --duration "$LAT_DURATION" --rate "$rate")
            read -r p99 p50 ops errs < <(jget "$j" '"%.3f %.3f %s %d" % (d["latency_us"]["handshake"]["p99"] / 1000, d["latency_us"]["handshake"]["p50"] / 1000, d["ops_per_s"], d["errors_total"])')
            raw "$run" "hs_p99_ms" "$p" "$k" "$p99" "rate=$rate/s achieved=$ops/s p50=${p50}ms errors=$errs server_cpu_s=$cpu"
            log "   $k p99 @ $rate/s $p: ${p99} ms (p50 $p50 ms, $ops/s, errors $errs)"
        done
    done

    if [ "$ONLY" != handshakes ]; then
    # (a) server CPU-s per GiB, upload and download; (e) the floor
    f=$(taskset -c "$SC" "$FWD" aead-floor --bytes "$BYTES" --alg "$ALG")
    v=$(tr ' ' '\n' <<<"$f" | sed -n 's/^open_cpu_s_per_gib=//p')
    raw "$run" aead "floor" "$BK" "$v" "$f"
    log "   aead-floor $ALG: $v CPU-s/GiB"
    for p in "${ORDER[@]}"; do
        j=$TMP/up-$run-$p.json
        cpu=$(load "$p" "${HS_PID[$p-$BK]}" "${HS_PORT[$p-$BK]}" "$BK" "$j" --mode upload \
            --connections 1 --object-size "$BYTES" --requests 1)
        read -r b mbs < <(jget "$j" '"%d %s" % (d["bytes_sent"], d["sent"]["payload_mb_s"])')
        v=$(calc "$cpu / ($b / 1073741824)" 4)
        raw "$run" up_cpu_per_gib "$p" "$BK" "$v" "bytes=$b MB/s=$mbs server_cpu_s=$cpu"
        log "   upload $p: $v CPU-s/GiB ($mbs MB/s)"
    done
    t0=$(ticks "$PLAIN_UP_PID")
    o=$(taskset -c "$CC" "$FWD" upload --connect "127.0.0.1:$PLAIN_UP_PORT" --bytes "$BYTES")
    t1=$(ticks "$PLAIN_UP_PID")
    v=$(calc "($t1 - $t0) / $TCK / $(calc "$(tr ' ' '\n' <<<"$o" | sed -n 's/^bytes=//p') / 1073741824" 6)" 4)
    raw "$run" plain_up "floor" "$BK" "$v" "$o"
    log "   haproxy mode tcp upload: $v CPU-s/GiB ($o)"
    for p in "${ORDER[@]}"; do
        j=$TMP/dn-$run-$p.json
        cpu=$(load "$p" "${DN_PID[$p]}" "${DN_PORT[$p]}" "$BK" "$j" --mode download \
            --connections 1 --object-size "$BYTES" --requests 1)
        read -r b mbs < <(jget "$j" '"%d %s" % (d["bytes_received"], d["received"]["payload_mb_s"])')
        v=$(calc "$cpu / ($b / 1073741824)" 4)
        raw "$run" dn_cpu_per_gib "$p" "$BK" "$v" "bytes=$b MB/s=$mbs server_cpu_s=$cpu"
        log "   download $p: $v CPU-s/GiB ($mbs MB/s)"
    done
    t0=$(ticks "$PLAIN_DN_PID")
    s0=$(date +%s.%N)
    b=$(taskset -c "$CC" bash -c "exec 3<>/dev/tcp/127.0.0.1/$PLAIN_DN_PORT; cat <&3 | wc -c")
    s1=$(date +%s.%N)
    t1=$(ticks "$PLAIN_DN_PID")
    v=$(calc "($t1 - $t0) / $TCK / ($b / 1073741824)" 4)
    raw "$run" plain_dn "floor" "$BK" "$v" "bytes=$b secs=$(calc "$s1 - $s0" 2)"
    log "   haproxy mode tcp download: $v CPU-s/GiB ($b bytes)"

    # (d) memory per idle established mTLS connection: a fresh server per measurement
    for p in "${ORDER[@]}"; do
        d=${PKI[$BK]}
        start "$p" "$p-idle-$run" "$BK" "$IDLESINK"
        ipid=$S_PID
        taskset -c "$CC" python3 "$IDLE" probe --port "$S_PORT" --ca "$d/ca.crt" --cert "$d/alice.crt" --key "$d/alice.key" >/dev/null
        sleep 1
        c0=$(cat "$TMP/idlesink.count")
        r0=$(tree_rss "$ipid")
        ready=$TMP/idle-$run-$p.ready
        taskset -c "$CC" python3 "$IDLE" hold --port "$S_PORT" --ca "$d/ca.crt" --cert "$d/alice.crt" --key "$d/alice.key" -n "$IDLE_N" --ready-file "$ready" 2>"$ready.log" &
        hpid=$!; PIDS+=("$hpid")
        wait_file "$ready" 12000 || { cat "$ready.log" >&2; exit 1; }
        for _ in $(seq 60); do [ "$(cat "$TMP/idlesink.count")" -ge $((c0 + IDLE_N)) ] && break; sleep 0.5; done
        sleep 2
        c1=$(cat "$TMP/idlesink.count")
        r1=$(tree_rss "$ipid")
        v=$(calc "($r1 - $r0) / $IDLE_N" 2)
        raw "$run" idle_kib "$p" "$BK" "$v" "n=$IDLE_N rss_before_kib=$r0 rss_after_kib=$r1 upstream_conns=$((c1 - c0)) hold=$(cut -d' ' -f2 "$ready")s"
        log "   idle $p: $v KiB/conn (RSS $r0 -> $r1 KiB, upstream connections $((c1 - c0)))"
        stop "$hpid"
        stop "$ipid"
        for _ in $(seq 60); do [ "$(cat "$TMP/idlesink.count")" -le "$c0" ] && break; sleep 0.5; done
    done
    fi
done
T_END=$(date +%s)

# ---- machine, versions, report ---------------------------------------------------------
SRC=$(source_rev)
ver() { dpkg-query -W -f='${Version}' "$1" 2>/dev/null || echo "?"; }
meta date "$DATE"
meta runs "$RUNS"
meta command "$CMDLINE"
meta cpu "$(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
meta kernel "$(uname -r)"
meta memory "$(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)"
meta tcp_cc "$(cat /proc/sys/net/ipv4/tcp_congestion_control)"
meta nofile "soft $(ulimit -Sn), hard $(ulimit -Hn)"
meta lakegate "$SRC"
meta haproxy "$(ver haproxy) ($(haproxy -v | head -1 | cut -d' ' -f1-3))"
meta stunnel "$(ver stunnel4) ($(stunnel4 -version 2>&1 | grep -m1 '^stunnel' | cut -d' ' -f1-2))"
meta nginx "$(ver nginx) ($(nginx -v 2>&1 | cut -d' ' -f3)), libnginx-mod-stream $(ver libnginx-mod-stream)"
meta openssl "$(ver openssl) ($(openssl version))"
meta rustls "$(awk '/^name = "rustls"$/ { getline; print $3 }' Cargo.lock | tr -d '"'), aws-lc-rs $(awk '/^name = "aws-lc-rs"$/ { getline; print $3 }' Cargo.lock | tr -d '"')"
meta python "$(python3 --version 2>&1)"
meta loadavg "start $LOAD0, end $(cut -d" " -f1-3 /proc/loadavg)"
meta wall "$((T_END - T_START)) s"
meta idle_n "$IDLE_N"
meta params "BYTES=$BYTES HS_DURATION=$HS_DURATION HS_CONNS=$HS_CONNS LAT_DURATION=$LAT_DURATION IDLE_N=$IDLE_N FLEET=$FLEET server core $SC, client+upstreams core $CC, bulk/idle key $BK, AEAD $ALG"

mkdir -p "$OUT"
cp "$RAW" "$OUT/raw.tsv"
cp "$META" "$OUT/meta.tsv" # so report.py can be re-run on these samples
PYTHONDONTWRITEBYTECODE=1 python3 benches/compare/report.py --raw "$RAW" --meta "$META" --json "$OUT/results.json" --md "$OUT/results-$DATE.md"
"$CHART" --in "$OUT/results.json" --out "$OUT/chart.svg" >&2
cat "$OUT/results-$DATE.md"
