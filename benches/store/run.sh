#!/usr/bin/env bash
# lakegate store backend: server CPU-seconds per GiB for PUT and GET of 64 MiB objects over
# one keep-alive mTLS connection (TLS13_AES_128_GCM_SHA256), against a floor of
# (a) aws-lc-rs AES-128-GCM open_in_place, (b) a dd-style plain copy socket<->tmpfs file
# and, for PUT, (c) aws-lc-rs SHA-256 of the bytes (the hash every PUT computes; issue 11
# defines the PUT floor as AES-GCM + SHA-256 + socket->tmpfs copy); and peak server RSS
# during a single 4 GiB object upload. Prints a Markdown table.
#
#   benches/store/run.sh                       # RUNS=3 TOTAL=4G OBJ=64M BIG=4G ETAG=sha256
#   FS=ext4 benches/store/run.sh               # root on ext4 (a loop image) instead of tmpfs
#
# FS: tmpfs (default) or ext4. tmpfs has no non-blocking buffered reads (preadv2
# RWF_NOWAIT is EOPNOTSUPP there), so io_uring hands every GET read of it to a kernel
# worker thread; ext4, like the filesystems a data lake sits on, reads cached pages
# inline. Both the server and the floor's copy use the same filesystem.
#
# ETAG is the server's [backend] etag. The default here is "sha256" so that the PUT does
# exactly the hashing the floor holds; with etag = "md5" (the server's default) every
# single-part PUT also runs MD5 (~1.8 CPU-s/GiB, benches/etag), which the floor leaves out.
#
# lakegate (workers = 1, cores = [0], taskset -c 0) and the floor's copy process on core 0;
# clients, senders and sinks on core 1. Store root and dd files on a tmpfs mounted at
# $MNT (unmounted at exit), fsync = "never". Server CPU = utime+stime from /proc/PID/stat
# before and after each transfer; the floor processes report their own getrusage.
# Needs root (mount), taskset, /usr/bin/time.
set -euo pipefail
cd "$(dirname "$0")/../.."
. benches/lib.sh

RUNS=${RUNS:-3}
TOTAL=${TOTAL:-4G}
OBJ=${OBJ:-64M}
BIG=${BIG:-4G}
ETAG=${ETAG:-sha256}
MNT=${MNT:-/mnt/lgbench}
FS=${FS:-tmpfs}
SC=0
CC=1
SOURCE=$(source_rev)
LOAD0=$(cut -d" " -f1-3 /proc/loadavg)

echo "== build" >&2
cargo build --release 2>&1 | tail -1 >&2
FWD=$(bench_exe forward); ST=$(bench_exe store)
LG=${LG:-$PWD/target/release/lakegate}
[ -x "$FWD" ] && [ -x "$ST" ] && [ -x "$LG" ] || { echo "build failed" >&2; exit 1; }

TOTAL_B=$(bytes "$TOTAL"); OBJ_B=$(bytes "$OBJ"); BIG_B=$(bytes "$BIG")
COUNT=$((TOTAL_B / OBJ_B))
GIB=$(awk -v b="$((COUNT * OBJ_B))" 'BEGIN { printf "%.6f", b / 1073741824 }')

bench_tmp TMP /tmp/lakegate-store.XXXXXX
MOUNTED=0
# The servers are killed first (bench_cleanup), then the tmpfs can go.
bench_cleanup_hook() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    [ "$MOUNTED" = 1 ] && umount "$MNT" && rmdir "$MNT" 2>/dev/null || true
}

mkdir -p "$MNT"
mountpoint -q "$MNT" && { echo "$MNT already mounted" >&2; exit 1; }
case "$FS" in
tmpfs)
    mount -t tmpfs -o size=10g tmpfs "$MNT"; MOUNTED=1
    # Untimed warm-up: touch 8 GiB of tmpfs pages once (the first touch of guest memory in
    # this VM is much slower and otherwise lands in whichever measurement runs first).
    dd if=/dev/zero of="$MNT/warm" bs=1M count=8192 status=none; rm -f "$MNT/warm"
    ;;
ext4)
    # A sparse image on the disk; user xattrs (the store's digests) are on by default.
    truncate -s 12G "$TMP/fs.img"; mkfs.ext4 -q -F "$TMP/fs.img"
    mount -o loop "$TMP/fs.img" "$MNT"; MOUNTED=1
    ;;
*) echo "FS must be tmpfs or ext4" >&2; exit 2 ;;
esac
mkdir -p "$MNT/store/datasets" "$MNT/dd"


echo "== lab PKI in $TMP" >&2
lab_pki "$TMP"
TLSARGS=(--ca "$TMP/ca.crt" --cert "$TMP/alice.crt" --key "$TMP/alice.key")

echo "== discarding sink on core $CC" >&2
taskset -c $CC "$FWD" sink --port-file "$TMP/sink.port" >/dev/null &
PIDS+=($!)
wait_file "$TMP/sink.port"; SINK=$(cat "$TMP/sink.port")

# start_lakegate NAME -> LG_PID (server), LG_TPID (/usr/bin/time), LG_PORT
start_lakegate() {
    local name=$1 port admin
    port=$("$FWD" free-port); admin=$("$FWD" free-port)
    lab_config "$TMP" "$port" "$admin" --server "workers = 1" --server "cores = [$SC]" \
        --backend 'kind = "store"' --backend "root = \"$MNT/store\"" --backend 'fsync = "never"' --backend "etag = \"$ETAG\"" \
        --authz 'buckets = ["datasets"]' --authz 'access = ["read", "write", "delete", "list"]' \
        >"$TMP/$name.toml"
    taskset -c $SC /usr/bin/time -v -o "$TMP/$name.time" "$LG" serve --config "$TMP/$name.toml" 2>"$TMP/$name.log" &
    LG_TPID=$!; PIDS+=($LG_TPID)
    LG_PID=""
    for _ in $(seq 100); do LG_PID=$(pgrep -P "$LG_TPID" || true); [ -n "$LG_PID" ] && break; sleep 0.05; done
    PIDS+=($LG_PID)
    "$FWD" wait-http --port "$admin" --path /readyz
    LG_PORT=$port
}
stop_lakegate() { kill -TERM "$1"; wait "$2" || true; }

# lg_op PID PORT put|get PREFIX COUNT SIZE -> "cpu_s_per_gib user sys gib_per_s suite"
lg_op() {
    local pid=$1 port=$2 op=$3 prefix=$4 count=$5 size=$6 u0 s0 u1 s1 out g
    g=$(awk -v b="$((count * size))" 'BEGIN { printf "%.6f", b / 1073741824 }')
    read -r u0 s0 < <(cpu_of "$pid")
    out=$(taskset -c $CC "$ST" "$op" --connect "127.0.0.1:$port" "${TLSARGS[@]}" --bucket datasets \
        --prefix "$prefix" --count "$count" --size "$size")
    read -r u1 s1 < <(cpu_of "$pid")
    echo "$(calc "($u1 + $s1 - $u0 - $s0) / $g") $(calc "($u1 - $u0) / $g") $(calc "($s1 - $s0) / $g") $(kv "$out" gib_per_s) $(kv "$out" suite)"
}

echo "== lakegate store on core $SC, root $MNT/store ($FS), fsync never" >&2
start_lakegate main
M_PID=$LG_PID; M_TPID=$LG_TPID; M_PORT=$LG_PORT

declare -a AF SH DDP DDG LGP LGG RP RG LGP_RAW LGG_RAW
for i in $(seq "$RUNS"); do
    echo "== round $i/$RUNS ($COUNT x $OBJ)" >&2
    f=$(taskset -c $SC "$FWD" aead-floor --bytes "$TOTAL" --alg aes128)
    AF+=("$(kv "$f" open_cpu_s_per_gib)"); echo "   (a) aead-floor: $f" >&2
    f=$(taskset -c $SC "$ST" sha256-floor --bytes "$((COUNT * OBJ_B))")
    SH+=("$(kv "$f" cpu_s_per_gib)"); echo "   (c) sha256-floor: $f" >&2
    # (b) PUT mirror: socket -> tmpfs file on core 0, fed from core 1
    rm -f "$TMP/cr.port"
    taskset -c $SC "$ST" copy-recv --dir "$MNT/dd" --file-size "$OBJ" --port-file "$TMP/cr.port" >"$TMP/cr.out" &
    CR=$!; PIDS+=($CR)
    wait_file "$TMP/cr.port"
    taskset -c $CC "$ST" send --connect "127.0.0.1:$(cat "$TMP/cr.port")" --bytes "$((COUNT * OBJ_B))" >/dev/null
    wait "$CR"; f=$(cat "$TMP/cr.out")
    DDP+=("$(kv "$f" cpu_s_per_gib)"); echo "   (b) copy socket->file: $f" >&2
    # (b) GET mirror: tmpfs file -> socket on core 0, discarding sink on core 1
    f=$(taskset -c $SC "$ST" file-send --dir "$MNT/dd" --connect "127.0.0.1:$SINK")
    DDG+=("$(kv "$f" cpu_s_per_gib)"); echo "   (b) copy file->socket: $f" >&2
    rm -f "$MNT"/dd/*
    r=$(lg_op "$M_PID" "$M_PORT" put "r$i" "$COUNT" "$OBJ_B")
    LGP+=("${r%% *}"); LGP_RAW+=("$r"); echo "   lakegate PUT: cpu/GiB user sys GiB/s suite = $r" >&2
    r=$(lg_op "$M_PID" "$M_PORT" get "r$i" "$COUNT" "$OBJ_B")
    LGG+=("${r%% *}"); LGG_RAW+=("$r"); echo "   lakegate GET: $r" >&2
    rm -f "$MNT/store/datasets/r$i-"*
    RP+=("$(calc "${LGP[-1]} / (${AF[-1]} + ${SH[-1]} + ${DDP[-1]})" 2)")
    RG+=("$(calc "${LGG[-1]} / (${AF[-1]} + ${DDG[-1]})" 2)")
done
M_HWM=$(awk '/VmHWM/ { print $2 }' "/proc/$M_PID/status")
stop_lakegate "$M_PID" "$M_TPID"
M_RSS=$(awk -F: '/Maximum resident set size/ { gsub(/ /, "", $2); print $2 }' "$TMP/main.time")

echo "== peak RSS: fresh lakegate, one $BIG object" >&2
start_lakegate big
r=$(lg_op "$LG_PID" "$LG_PORT" put big 1 "$BIG_B"); echo "   PUT $BIG: $r" >&2
B_PUT=$r
B_HWM=$(awk '/VmHWM/ { print $2 }' "/proc/$LG_PID/status")
stop_lakegate "$LG_PID" "$LG_TPID"
B_RSS=$(awk -F: '/Maximum resident set size/ { gsub(/ /, "", $2); print $2 }' "$TMP/big.time")
rm -f "$MNT/store/datasets/big-"*

M_AF=$(median "${AF[@]}"); M_SH=$(median "${SH[@]}")
cat <<MD

## lakegate store backend — $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), kernel $(uname -r)
source: $SOURCE; $COUNT objects x $OBJ = $TOTAL per direction per run; $RUNS runs; server core $SC, client core $CC; store root on $FS, fsync = "never", etag = "$ETAG"; TCP cc $(cat /proc/sys/net/ipv4/tcp_congestion_control); load average at start $LOAD0, at end $(cut -d" " -f1-3 /proc/loadavg).

| measurement | median | runs |
|---|---|---|
| (1) lakegate PUT, TLS13_AES_128_GCM_SHA256, server CPU-s/GiB | $(median "${LGP[@]}") | ${LGP[*]} |
|   … user / sys CPU-s/GiB | $(median $(col 2 "${LGP_RAW[@]}")) / $(median $(col 3 "${LGP_RAW[@]}")) | $(col 2 "${LGP_RAW[@]}" | xargs) / $(col 3 "${LGP_RAW[@]}" | xargs) |
|   … client-observed GiB/s | $(median $(col 4 "${LGP_RAW[@]}")) | $(col 4 "${LGP_RAW[@]}" | xargs) |
| (1) lakegate GET, server CPU-s/GiB | $(median "${LGG[@]}") | ${LGG[*]} |
|   … user / sys CPU-s/GiB | $(median $(col 2 "${LGG_RAW[@]}")) / $(median $(col 3 "${LGG_RAW[@]}")) | $(col 2 "${LGG_RAW[@]}" | xargs) / $(col 3 "${LGG_RAW[@]}" | xargs) |
|   … client-observed GiB/s | $(median $(col 4 "${LGG_RAW[@]}")) | $(col 4 "${LGG_RAW[@]}" | xargs) |
| (2a) aws-lc-rs AES-128-GCM open_in_place, 16 KiB records, CPU-s/GiB | $M_AF | ${AF[*]} |
| (2b) copy socket → $FS file (64 KiB read/write), CPU-s/GiB | $(median "${DDP[@]}") | ${DDP[*]} |
| (2b) copy $FS file → socket (64 KiB read/write), CPU-s/GiB | $(median "${DDG[@]}") | ${DDG[*]} |
| (2c) aws-lc-rs SHA-256, 16 KiB pieces, CPU-s/GiB | $M_SH | ${SH[*]} |
| **PUT: lakegate / (2a + 2b + 2c)**, per run then median (aim ≤ 1.25) | **$(median "${RP[@]}")** | ${RP[*]} |
| **GET: lakegate / (2a + 2b)**, per run then median (aim ≤ 1.15) | **$(median "${RG[@]}")** | ${RG[*]} |
| PUT: lakegate − (2a + 2b + 2c), CPU-s/GiB (medians) | $(calc "$(median "${LGP[@]}") - $M_AF - $M_SH - $(median "${DDP[@]}")") | |
| GET: lakegate − (2a + 2b), CPU-s/GiB (medians) | $(calc "$(median "${LGG[@]}") - $M_AF - $(median "${DDG[@]}")") | |
| (3) peak RSS, fresh server, one $BIG PUT (VmHWM; /usr/bin/time -v max RSS), aim < 64 MiB | ${B_HWM} KiB; ${B_RSS} KiB | PUT: $(set -- $B_PUT; echo "$1 CPU-s/GiB, $4 GiB/s") |
| peak RSS of the main server over all runs (VmHWM; /usr/bin/time -v) | ${M_HWM} KiB; ${M_RSS} KiB | |
MD
