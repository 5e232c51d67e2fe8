#!/usr/bin/env bash
# Where lakegate's CPU goes during store GETs, beside the GET floor of run.sh (same setup:
# workers = 1 on core 0, client on core 1, TLS13_AES_128_GCM_SHA256, store root on tmpfs).
#
#   1. perf record -e cpu-clock -g (this VM has no PMU) of lakegate during GETs of
#      COUNT x OBJ, and of the floor's `file-send` (tmpfs file -> socket, 64 KiB
#      read/write) over the same bytes: every sample to one bucket by its stack.
#   2. callgrind of lakegate during GETs of CG_COUNT x OBJ (collection on for the GETs
#      only): user-space instructions by function, inclusive and self, and the callers of
#      memcpy. Instruction counts do not move with other load on the machine.
#
#   COUNT=16 CG_COUNT=4 OBJ=64M benches/store/profile.sh     # ~3-5 min; needs root (mount)
set -euo pipefail
cd "$(dirname "$0")/../.."
COUNT=${COUNT:-16}
CG_COUNT=${CG_COUNT:-4}
OBJ=${OBJ:-64M}
MNT=${MNT:-/mnt/lgprofile}
OUT=${OUT:-$(mktemp -d /tmp/lakegate-store-profile.XXXXXX)}
FREQ=4000
SC=0
CC=1

cargo build --release 2>&1 | tail -1 >&2
exe_of() { cargo bench --bench "$1" --no-run --message-format=json 2>/dev/null |
    sed -n "s/.*\"executable\":\"\([^\"]*\/$1-[^\"]*\)\".*/\1/p" | tail -1; }
FWD=$(exe_of forward); ST=$(exe_of store)
LG=$PWD/target/release/lakegate
command -v valgrind >/dev/null && command -v perf >/dev/null || { echo "needs perf and valgrind" >&2; exit 1; }
OBJ_B=$(awk -v b="$OBJ" 'BEGIN { m = 1; u = substr(b, length(b)); if (u == "G") m = 1073741824; else if (u == "M") m = 1048576; printf "%.0f", substr(b, 1, length(b) - 1) * m }')
GIB=$(awk -v b="$((COUNT * OBJ_B))" 'BEGIN { printf "%.6f", b / 1073741824 }')
CG_GIB=$(awk -v b="$((CG_COUNT * OBJ_B))" 'BEGIN { printf "%.6f", b / 1073741824 }')

PIDS=()
MOUNTED=0
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    [ "$MOUNTED" = 1 ] && umount "$MNT" && rmdir "$MNT" 2>/dev/null || true
}
trap cleanup EXIT
mkdir -p "$MNT"
mountpoint -q "$MNT" && { echo "$MNT already mounted" >&2; exit 1; }
mount -t tmpfs -o size=6g tmpfs "$MNT"; MOUNTED=1
mkdir -p "$MNT/store/datasets" "$MNT/dd"

"$LG" pki init --dir "$OUT" >/dev/null
"$LG" pki client --dir "$OUT" alice --spiffe spiffe://lake.example/trainer/alice >/dev/null
"$LG" pki crl --dir "$OUT" >/dev/null
TLSARGS=(--ca "$OUT/ca.crt" --cert "$OUT/alice.crt" --key "$OUT/alice.key")
taskset -c $CC "$FWD" sink --port-file "$OUT/sink.port" >/dev/null &
PIDS+=($!)
for _ in $(seq 100); do [ -s "$OUT/sink.port" ] && break; sleep 0.05; done
SINK=$(cat "$OUT/sink.port")

config() { # PORT ADMIN
    cat <<TOML
[server]
listen = "127.0.0.1:$1"
workers = 1
cores = [$SC]
[tls]
cert = "server.crt"
key = "server.key"
client_ca = "ca.crt"
crl = ["crl.pem"]
[admin]
listen = "127.0.0.1:$2"
[backend]
kind = "store"
root = "$MNT/store"
fsync = "never"
etag = "sha256"
[[authz]]
identity = "spiffe://lake.example/trainer/*"
buckets = ["datasets"]
access = ["read", "write", "delete", "list"]
TOML
}
op() { # PORT put|get COUNT
    taskset -c $CC "$ST" "$2" --connect "127.0.0.1:$1" "${TLSARGS[@]}" --bucket datasets --prefix p --count "$3" --size "$OBJ_B" >&2
}

# Every sample to one bucket by the first rule its stack matches (whole stack searched).
classify() { # PERF_DATA GIB
    perf script -i "$1" -F comm,ip,sym 2>/dev/null | awk -v f="$FREQ" -v gib="$2" '
        function bucket(st) {
            if (st ~ / asm_sysvec_|asm_common_interrupt/) return "irq: tick/hrtimer + softirq at irq exit"
            if (st ~ / (filemap_read|shmem_file_read_iter) /) return "kernel: file read (page cache -> user copy)"
            if (st ~ / (tcp_sendmsg|__sys_sendto|sock_write_iter) /) return "kernel: send to client (tcp_sendmsg, copy_from_user, loopback rx)"
            if (st ~ / (tcp_recvmsg|__sys_recvfrom) /) return "kernel: recv (requests, ACK processing)"
            if (st ~ /^ [a-z_0-9]*(aes_gcm_encrypt|aesni_gcm_encrypt|ghash|gcm_)[a-z_0-9]* / || st ~ / aws_lc_[0-9_]+_EVP_AEAD_CTX_seal/) return "user: AES-GCM seal (aws-lc)"
            if (st ~ /^ (__memmove|__memcpy)[a-z0-9_]* /) return "user: memcpy/memmove (plaintext -> record buffer)"
            if (comm ~ /^iou-wrk/) return "io-wq worker (io_uring ops punted to a kernel thread)"
            if (st ~ / (do_)?epoll_wait /) return "kernel: epoll_wait"
            if (st ~ / asm_exc_page_fault /) return "kernel: page faults"
            if (st ~ / __do_sys_io_uring_enter /) return "kernel: io_uring_enter other (submit, completions, task_work)"
            if (st ~ / (schedule|finish_task_switch[.a-z]*) /) return "kernel: scheduler"
            if (st ~ / (tokio|tokio_uring)::/) return "user: tokio / tokio-uring runtime"
            if (st ~ / lakegate::/) return "user: lakegate"
            if (st ~ / (syscall|do_syscall_64|entry_SYSCALL_64[a-z_]*) /) return "kernel: other syscalls"
            return "other (" comm ")"
        }
        /^[^\t ]/ { if (st != "") { b[bucket(st)]++; n++ }; st = " "; comm = $1; next }
        /^$/ { next }
        { st = st $2 " " }
        END {
            if (st != " ") { b[bucket(st)]++; n++ }
            printf "%d samples at %d Hz = %.3f CPU-s/GiB (profiled; sampling adds overhead)\n", n, f, n / f / gib
            printf "%7s %10s  %s\n", "share", "CPU-s/GiB", "bucket"
            for (k in b) printf "%6.1f%% %10.3f  %s\n", 100 * b[k] / n, b[k] / f / gib, k | "sort -rn"
        }'
}

echo "== lakegate: PUT $COUNT x $OBJ (untimed), then perf record during GETs" >&2
PORT=$("$FWD" free-port); ADMIN=$("$FWD" free-port)
config "$PORT" "$ADMIN" >"$OUT/perf.toml"
taskset -c $SC "$LG" serve --config "$OUT/perf.toml" 2>"$OUT/perf-lakegate.log" &
LGP=$!; PIDS+=($LGP)
"$FWD" wait-http --port "$ADMIN"
op "$PORT" put "$COUNT"
ctx() { awk '/^(voluntary|nonvoluntary)_ctxt_switches/ { s += $2 } END { print s }' /proc/"$1"/task/*/status; }
c0=$(ctx "$LGP")
op "$PORT" get "$COUNT"
c1=$(ctx "$LGP")
echo "lakegate GET, unprofiled: $(awk -v a="$c0" -v b="$c1" -v g="$GIB" 'BEGIN { printf "%.0f", (b - a) / g }') context switches per GiB (all threads, voluntary + involuntary)" >"$OUT/ctx.txt"
# io_uring operations per GiB of GET, and how many the kernel punted to an io-wq thread
perf record -e io_uring:io_uring_submit_req,io_uring:io_uring_queue_async_work,io_uring:io_uring_poll_arm \
    -p "$LGP" -o "$OUT/ops-get.data" 2>"$OUT/perf-record.log" &
PERFP=$!; PIDS+=($PERFP)
sleep 1
op "$PORT" get "$COUNT"
kill -INT "$PERFP"; wait "$PERFP" || true
perf script -i "$OUT/ops-get.data" 2>/dev/null | awk -v gib="$GIB" '
    { if (!match($0, /opcode [A-Z_]+/)) next; o = substr($0, RSTART + 7, RLENGTH - 7) }
    /io_uring_submit_req:/ { sub_n[o]++ }
    /io_uring_queue_async_work:/ { punt[o]++ }
    /io_uring_poll_arm:/ { arm[o]++ }
    END {
        printf "lakegate GET, io_uring operations per GiB (%s GiB)\n", gib
        printf "%-10s %12s %14s %12s\n", "opcode", "submitted", "punted to io-wq", "poll arms"
        for (o in sub_n) printf "%-10s %12.0f %14.0f %12.0f\n", o, sub_n[o] / gib, punt[o] / gib, arm[o] / gib
    }' >"$OUT/ops-get.txt"
perf record -e cpu-clock -F $FREQ -g -p "$LGP" -o "$OUT/perf-get.data" 2>>"$OUT/perf-record.log" &
PERFP=$!; PIDS+=($PERFP)
sleep 1
op "$PORT" get "$COUNT"
kill -INT "$PERFP"; wait "$PERFP" || true
kill -TERM "$LGP"; wait "$LGP" || true
perf report -i "$OUT/perf-get.data" --no-children --sort sym --stdio -g none --percent-limit 1 2>/dev/null |
    grep -v '^$' | grep -v '^#' >"$OUT/perf-get-self.txt"
classify "$OUT/perf-get.data" "$GIB" >"$OUT/perf-get-buckets.txt"

echo "== floor: perf record of file-send over the same bytes" >&2
for i in $(seq "$COUNT"); do dd if=/dev/zero of="$MNT/dd/f-$(printf %04d "$i")" bs=1M count=$((OBJ_B >> 20)) status=none; done
taskset -c $SC /usr/bin/time -f "%w %c" -o "$OUT/floor-ctx.txt" "$ST" file-send --dir "$MNT/dd" --connect "127.0.0.1:$SINK" >/dev/null
echo "floor file-send: $(awk -v g="$GIB" '{ printf "%.0f", ($1 + $2) / g }' "$OUT/floor-ctx.txt") context switches per GiB (voluntary + involuntary)" >>"$OUT/ctx.txt"
perf record -e cpu-clock -F $FREQ -g -o "$OUT/perf-floor.data" -- \
    taskset -c $SC "$ST" file-send --dir "$MNT/dd" --connect "127.0.0.1:$SINK" >"$OUT/floor.txt" 2>>"$OUT/perf-record.log"
perf report -i "$OUT/perf-floor.data" --no-children --sort sym --stdio -g none --percent-limit 1 2>/dev/null |
    grep -v '^$' | grep -v '^#' >"$OUT/perf-floor-self.txt"
classify "$OUT/perf-floor.data" "$GIB" >"$OUT/perf-floor-buckets.txt"
rm -f "$MNT"/dd/*

echo "== callgrind: GETs of $CG_COUNT x $OBJ" >&2
PORT=$("$FWD" free-port); ADMIN=$("$FWD" free-port)
config "$PORT" "$ADMIN" >"$OUT/cg.toml"
taskset -c $SC valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$OUT/callgrind-get.out" \
    "$LG" serve --config "$OUT/cg.toml" 2>"$OUT/cg-lakegate.log" &
CGP=$!; PIDS+=($CGP)
"$FWD" wait-http --port "$ADMIN"
callgrind_control -i on "$CGP" >/dev/null
op "$PORT" get "$CG_COUNT"
callgrind_control -i off "$CGP" >/dev/null
kill -TERM "$CGP"; wait "$CGP" || true
callgrind_annotate --inclusive=yes "$OUT/callgrind-get.out" >"$OUT/cg-inclusive-full.txt" 2>/dev/null || true
awk '/^ *[0-9,]+ \(/ && n++ < 40' "$OUT/cg-inclusive-full.txt" | cut -c1-220 >"$OUT/cg-inclusive.txt"
callgrind_annotate "$OUT/callgrind-get.out" >"$OUT/cg-self-full.txt" 2>/dev/null || true
awk '/^ *[0-9,]+ \(/ && n++ < 16' "$OUT/cg-self-full.txt" | cut -c1-220 >"$OUT/cg-self.txt"
TOT=$(sed -n 's/^totals: \([0-9]*\).*/\1/p' "$OUT/callgrind-get.out")
echo "Ir total $TOT over $CG_GIB GiB = $(awk -v t="$TOT" -v g="$CG_GIB" 'BEGIN { printf "%.0f", t / g / 1e6 }') MIr/GiB" >>"$OUT/cg-self.txt"
callgrind_annotate --tree=caller "$OUT/callgrind-get.out" >"$OUT/cg-callers-full.txt" 2>/dev/null || true
awk '/\*  .*__mem(cpy|move)_[a-z0-9_]*unaligned_erms/ { for (i = NR - 1; i > 0 && l[i] ~ /</; i--) print l[i]; exit } { l[NR] = $0 }' "$OUT/cg-callers-full.txt" |
    sed 's/,//g' | sort -k1 -rn | awk 'NR <= 5' | cut -c1-200 >"$OUT/cg-memcpy-callers.txt"

echo "floor file-send: $(cat "$OUT/floor.txt")"
for f in ctx ops-get perf-get-buckets perf-get-self perf-floor-buckets perf-floor-self cg-self cg-inclusive cg-memcpy-callers; do
    echo "### $f"
    echo '```'
    cat "$OUT/$f.txt"
    echo '```'
done
echo "(raw data in $OUT)"
