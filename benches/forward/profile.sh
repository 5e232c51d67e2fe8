#!/usr/bin/env bash
# Where lakegate's CPU goes during a forward-mode upload (same setup as run.sh: 1 worker
# on core 0, client and sink on core 1, TLS13_AES_128_GCM_SHA256).
#
#   1. perf: `perf stat -e instructions` is tried first; this VM exposes no PMU, so the
#      profile is `perf record -e cpu-clock -g` (software timer sampling, user + kernel)
#      of the lakegate process during a PERF_BYTES upload: self time by symbol, and
#      inclusive time of the kernel paths (kernel stacks are reliable with -g; user stacks
#      are not, release builds keep no frame pointers).
#   2. callgrind: lakegate under `valgrind --tool=callgrind` (collection switched on just
#      for the upload with callgrind_control) during a CG_BYTES upload: user-space
#      instructions, top functions by inclusive and by self cost.
#
#   3. handshakes: cpu-clock profile of HS_FULL_N full and HS_RES_N resumed mTLS
#      handshakes (each: connect, handshake, 1 byte echoed through the upstream, close),
#      bucketed per connection; callgrind of HS_CG_N full handshakes for call counts.
#
#   PERF_BYTES=1G CG_BYTES=256M OPS_BYTES=256M HS_FULL_N=1500 HS_RES_N=2000 benches/forward/profile.sh
#   KEY_TYPE=rsa2048 benches/forward/profile.sh   # server key and CA (lakegate pki init --key-type)
set -euo pipefail
cd "$(dirname "$0")/../.."
. benches/lib.sh
PERF_BYTES=${PERF_BYTES:-1G}
CG_BYTES=${CG_BYTES:-256M}
OPS_BYTES=${OPS_BYTES:-256M}
HS_FULL_N=${HS_FULL_N:-1500}
HS_RES_N=${HS_RES_N:-2000}
HS_CG_N=${HS_CG_N:-20}
KEY_TYPE=${KEY_TYPE:-ecdsa-p256}
OUT=${OUT:-$(mktemp -d /tmp/lakegate-profile.XXXXXX)}
SC=0
CC=1

cargo build --release 2>&1 | tail -1 >&2
BENCH=$(bench_exe forward)
LG=$PWD/target/release/lakegate

lab_pki "$OUT" --key-type "$KEY_TYPE"
TLSARGS=(--ca "$OUT/ca.crt" --cert "$OUT/alice.crt" --key "$OUT/alice.key" --suite aes128)
taskset -c $CC "$BENCH" sink --port-file "$OUT/sink.port" >/dev/null &
PIDS+=($!)
wait_file "$OUT/sink.port" 100
SINK=$(cat "$OUT/sink.port")

config() { # PORT ADMIN
    lab_config "$OUT" "$1" "$2" --server "workers = 1" --server "cores = [$SC]" \
        --backend 'kind = "forward"' --backend "upstream = \"127.0.0.1:$SINK\""
}

echo "== perf stat -e instructions true" >&2
perf stat -e instructions true 2>&1 | grep -E "instructions" | tee "$OUT/perf-stat.txt" >&2

echo "== perf record -e cpu-clock, $PERF_BYTES upload" >&2
PORT=$("$BENCH" free-port); ADMIN=$("$BENCH" free-port)
config "$PORT" "$ADMIN" >"$OUT/perf.toml"
taskset -c $SC "$LG" serve --config "$OUT/perf.toml" 2>"$OUT/perf-lakegate.log" &
LGP=$!; PIDS+=($LGP)
"$BENCH" wait-http --port "$ADMIN"
perf record -e cpu-clock -F 4000 -g -p "$LGP" -o "$OUT/perf.data" 2>"$OUT/perf-record.log" &
PERFP=$!; PIDS+=($PERFP)
sleep 1
taskset -c $CC "$BENCH" upload --connect "127.0.0.1:$PORT" --bytes "$PERF_BYTES" "${TLSARGS[@]}" >&2
kill -INT "$PERFP"; wait "$PERFP" || true
kill -TERM "$LGP"; wait "$LGP" || true
perf report -i "$OUT/perf.data" --no-children --sort sym --stdio -g none --percent-limit 0.7 2>/dev/null |
    grep -v '^$' >"$OUT/perf-self.txt"
perf report -i "$OUT/perf.data" --children --sort sym --stdio -g none --percent-limit 3 2>/dev/null |
    grep -v '^$' >"$OUT/perf-children.txt"
perf report -i "$OUT/perf.data" --no-children --sort dso --stdio -g none 2>/dev/null |
    grep -v '^$' >"$OUT/perf-dso.txt"

# Inclusive share of the key paths, as CPU-s/GiB: "share% of samples" x samples / (F x GiB).
breakdown() { # PERF_DATA BYTES SYMBOL...
    local data=$1 bytes=$2; shift 2
    local n gib
    n=$(perf script -i "$data" -F period 2>/dev/null | wc -l)
    gib=$(awk -v b="$bytes" 'BEGIN { m = 1; u = substr(b, length(b)); if (u == "G") m = 1073741824; else if (u == "M") m = 1048576; printf "%.6f", substr(b, 1, length(b) - 1) * m / 1073741824 }')
    perf report -i "$data" --children --sort sym --stdio -g none 2>/dev/null >"$data.children"
    echo "samples=$n at ${FREQ}Hz over $bytes: $(awk -v n="$n" -v f="$FREQ" -v g="$gib" 'BEGIN { printf "%.3f", n / f / g }') CPU-s/GiB in total"
    printf '%-46s %8s %10s\n' "path (inclusive)" "share" "CPU-s/GiB"
    for sym in "$@"; do
        awk -v s="$sym" -v n="$n" -v f="$FREQ" -v g="$gib" '/^ +[0-9.]+%/ { k = index($0, "] "); if (substr($0, k + 2) == s) { printf "%-46s %7.2f%% %10.3f\n", s, $1 + 0, ($1 + 0) / 100 * n / f / g; exit } }' "$data.children"
    done
}
FREQ=4000

# Every sample to one bucket by the first rule its stack matches (whole stack searched):
# interrupts first (deferred TCP transmit, BBR pacing timers, RCU, the tick), then the
# data-path syscalls, then user-space work.
classify() { # PERF_DATA BYTES
    local gib
    gib=$(awk -v b="$2" 'BEGIN { m = 1; u = substr(b, length(b)); if (u == "G") m = 1073741824; else if (u == "M") m = 1048576; printf "%.6f", substr(b, 1, length(b) - 1) * m / 1073741824 }')
    perf script -i "$1" -F comm,ip,sym 2>/dev/null | awk -v f="$FREQ" -v gib="$gib" '
        function bucket(st) {
            if (st ~ / asm_sysvec_|asm_common_interrupt/) return "irq: tick/hrtimer + softirq at irq exit (deferred TCP xmit, pacing)"
            if (st ~ / io_read |__sys_recvfrom /) return "kernel: recv from client (tcp_recvmsg, copy_to_user, ACKs)"
            if (st ~ / io_write |__sys_sendto /) return "kernel: send to upstream (tcp_sendmsg, copy_from_user, loopback rx, wakeup)"
            if (st ~ / aws_lc_[0-9_]+_EVP_AEAD_CTX_open /) return "user: AES-GCM open (aws-lc)"
            if (st ~ /^ (__memmove|__memcpy)[a-z_]* /) return "user: memcpy/memmove (plaintext copies, tail move)"
            if (st ~ / (do_)?epoll_wait /) return "kernel: epoll_wait"
            if (st ~ / asm_exc_page_fault /) return "kernel: page faults"
            if (st ~ / __do_sys_io_uring_enter /) return "kernel: io_uring_enter other (submit, completions, task_work)"
            if (st ~ / (schedule|finish_task_switch[.a-z]*) /) return "kernel: scheduler"
            if (st ~ / rustls::/) return "user: rustls other (record framing, state machine)"
            if (st ~ / (tokio|tokio_uring)::/) return "user: tokio / tokio-uring runtime"
            if (st ~ / lakegate::/) return "user: lakegate"
            if (st ~ / (syscall|do_syscall_64) /) return "kernel: other syscalls"
            if (comm == "haproxy" && st !~ / [a-z_]+\.?[a-z]* $/) return "user: haproxy"
            return "other (" comm ")"
        }
        /^[^\t ]/ { if (st != "") { b[bucket(st)]++; n++ }; st = " "; comm = $1; next }
        /^$/ { next }
        { st = st $2 " " }
        END {
            if (st != " ") { b[bucket(st)]++; n++ }
            printf "%d samples at %d Hz = %.3f CPU-s/GiB\n", n, f, n / f / gib
            printf "%7s %10s  %s\n", "share", "CPU-s/GiB", "bucket"
            for (k in b) printf "%6.1f%% %10.3f  %s\n", 100 * b[k] / n, b[k] / f / gib, k | "sort -rn"
        }'
}
LG_SYMS=(__do_sys_io_uring_enter io_read io_write tcp_recvmsg tcp_sendmsg _copy_to_iter _copy_from_iter
    handle_softirqs sock_def_readable try_to_wake_up _raw_spin_unlock_irqrestore
    aws_lc_0_47_0_EVP_AEAD_CTX_open __memmove_avx_unaligned_erms
    epoll_wait asm_sysvec_apic_timer_interrupt
    rustls::server::connection::UnbufferedServerConnection::process_tls_records
    lakegate::tls::conn::TlsConn::handle_received)
breakdown "$OUT/perf.data" "$PERF_BYTES" "${LG_SYMS[@]}" >"$OUT/perf-breakdown.txt"
classify "$OUT/perf.data" "$PERF_BYTES" >"$OUT/perf-buckets.txt"

echo "== haproxy (mode tcp, no TLS): perf record -e cpu-clock, $PERF_BYTES upload" >&2
HP_PORT=$("$BENCH" free-port)
cat >"$OUT/haproxy.cfg" <<CFG
global
    nbthread 1
    cpu-map 1/1 $SC
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
taskset -c $SC haproxy -db -f "$OUT/haproxy.cfg" >"$OUT/haproxy.log" 2>&1 &
HPP=$!; PIDS+=($HPP)
sleep 1
perf record -e cpu-clock -F $FREQ -g -p "$HPP" -o "$OUT/perf-haproxy.data" 2>>"$OUT/perf-record.log" &
PERFP=$!; PIDS+=($PERFP)
sleep 1
taskset -c $CC "$BENCH" upload --connect "127.0.0.1:$HP_PORT" --bytes "$PERF_BYTES" >&2
kill -INT "$PERFP"; wait "$PERFP" || true
perf report -i "$OUT/perf-haproxy.data" --no-children --sort sym --stdio -g none --percent-limit 1 2>/dev/null |
    grep -v '^$' | grep -v '^#' >"$OUT/perf-haproxy-self.txt"
breakdown "$OUT/perf-haproxy.data" "$PERF_BYTES" do_syscall_64 __sys_recvfrom __sys_sendto tcp_recvmsg tcp_sendmsg \
    _copy_to_iter _copy_from_iter handle_softirqs sock_def_readable _raw_spin_unlock_irqrestore \
    do_epoll_wait asm_sysvec_apic_timer_interrupt >"$OUT/perf-haproxy-breakdown.txt"
classify "$OUT/perf-haproxy.data" "$PERF_BYTES" >"$OUT/perf-haproxy-buckets.txt"

echo "== operations per GiB (tracepoints), $OPS_BYTES uploads" >&2
PORT=$("$BENCH" free-port); ADMIN=$("$BENCH" free-port)
config "$PORT" "$ADMIN" >"$OUT/ops.toml"
taskset -c $SC "$LG" serve --config "$OUT/ops.toml" 2>"$OUT/ops-lakegate.log" &
LGP=$!; PIDS+=($LGP)
"$BENCH" wait-http --port "$ADMIN"
perf record -e io_uring:io_uring_submit_req,io_uring:io_uring_complete,io_uring:io_uring_poll_arm,raw_syscalls:sys_enter \
    -p "$LGP" -o "$OUT/ops-lg.data" 2>>"$OUT/perf-record.log" &
PERFP=$!; PIDS+=($PERFP)
sleep 1
taskset -c $CC "$BENCH" upload --connect "127.0.0.1:$PORT" --bytes "$OPS_BYTES" "${TLSARGS[@]}" >&2
kill -INT "$PERFP"; wait "$PERFP" || true
kill -TERM "$LGP"; wait "$LGP" || true
perf script -i "$OUT/ops-lg.data" 2>/dev/null | awk -v bytes="$OPS_BYTES" '
    BEGIN { m = 1; u = substr(bytes, length(bytes)); if (u == "G") m = 1073741824; else if (u == "M") m = 1048576; gib = substr(bytes, 1, length(bytes) - 1) * m / 1073741824 }
    /io_uring_submit_req:/ { match($0, /req 0x[0-9a-f]+/); r = substr($0, RSTART + 4, RLENGTH - 4); match($0, /opcode [A-Z_]+/); op[r] = substr($0, RSTART + 7, RLENGTH - 7); sub_n[op[r]]++ }
    /io_uring_poll_arm:/ { match($0, /opcode [A-Z_]+/); arm[substr($0, RSTART + 7, RLENGTH - 7)]++ }
    /io_uring_complete:/ { match($0, /req 0x[0-9a-f]+/); r = substr($0, RSTART + 4, RLENGTH - 4); match($0, /result -?[0-9]+/); res = substr($0, RSTART + 7, RLENGTH - 7) + 0; o = (r in op) ? op[r] : "?"; cn[o]++; if (res > 0) { by[o] += res } else if (res < 0) { neg[o]++ } }
    /raw_syscalls:sys_enter:/ { match($0, /NR [0-9]+/); nr[substr($0, RSTART + 3, RLENGTH - 3)]++ }
    END {
        printf "lakegate, %s upload (io_uring ops; sizes are completion results)\n", bytes
        printf "%-10s %10s %10s %12s %12s %10s\n", "opcode", "submitted", "completed", "per GiB", "mean bytes", "poll arms"
        for (o in sub_n) printf "%-10s %10d %10d %12.0f %12.0f %10d\n", o, sub_n[o], cn[o], cn[o] / gib, (cn[o] ? by[o] / cn[o] : 0), arm[o]
        printf "syscalls by number (426 = io_uring_enter, 232 = epoll_wait), per GiB:"
        for (k in nr) printf " %s:%.0f", k, nr[k] / gib
        printf "\n"
    }' >"$OUT/ops.txt"

perf record -e syscalls:sys_exit_recvfrom,syscalls:sys_exit_sendto,raw_syscalls:sys_enter -p "$HPP" -o "$OUT/ops-hp.data" 2>>"$OUT/perf-record.log" &
PERFP=$!; PIDS+=($PERFP)
sleep 1
taskset -c $CC "$BENCH" upload --connect "127.0.0.1:$HP_PORT" --bytes "$OPS_BYTES" >&2
kill -INT "$PERFP"; wait "$PERFP" || true
kill "$HPP"; wait "$HPP" 2>/dev/null || true
perf script -i "$OUT/ops-hp.data" 2>/dev/null | awk -v bytes="$OPS_BYTES" '
    function hex(h,    i, v, c) { h = tolower(h); sub(/^0x/, "", h); if (length(h) > 15) return -1; v = 0; for (i = 1; i <= length(h); i++) { c = index("0123456789abcdef", substr(h, i, 1)) - 1; v = v * 16 + c }; return v }
    BEGIN { m = 1; u = substr(bytes, length(bytes)); if (u == "G") m = 1073741824; else if (u == "M") m = 1048576; gib = substr(bytes, 1, length(bytes) - 1) * m / 1073741824 }
    /sys_exit_recvfrom:/ { v = hex($NF); if (v > 0) { rn++; rb += v } else re++ }
    /sys_exit_sendto:/ { v = hex($NF); if (v > 0) { sn++; sb += v } else se++ }
    /raw_syscalls:sys_enter:/ { match($0, /NR [0-9]+/); nr[substr($0, RSTART + 3, RLENGTH - 3)]++ }
    END {
        printf "haproxy, %s upload: recvfrom %.0f/GiB (mean %.0f B, %d EAGAIN/0), sendto %.0f/GiB (mean %.0f B)\n", bytes, rn / gib, rb / rn, re, sn / gib, sb / sn
        printf "syscalls by number (45 = recvfrom, 44 = sendto, 232 = epoll_wait), per GiB:"
        for (k in nr) printf " %s:%.0f", k, nr[k] / gib
        printf "\n"
    }' >"$OUT/ops-haproxy.txt"

echo "== handshakes: perf record -e cpu-clock during $HS_FULL_N full and $HS_RES_N resumed" >&2
taskset -c $CC "$BENCH" sink --echo --port-file "$OUT/echo.port" >/dev/null &
PIDS+=($!)
for _ in $(seq 100); do [ -s "$OUT/echo.port" ] && break; sleep 0.05; done
ECHO=$(cat "$OUT/echo.port")
PORT=$("$BENCH" free-port); ADMIN=$("$BENCH" free-port)
config "$PORT" "$ADMIN" | sed "s/^upstream = .*/upstream = \"127.0.0.1:$ECHO\"/" >"$OUT/hs.toml"
taskset -c $SC "$LG" serve --config "$OUT/hs.toml" 2>"$OUT/hs-lakegate.log" &
LGP=$!; PIDS+=($LGP)
"$BENCH" wait-http --port "$ADMIN"
HSARGS=(--connect "127.0.0.1:$PORT" --ca "$OUT/ca.crt" --cert "$OUT/alice.crt" --key "$OUT/alice.key" --threads 2)
for kind in full resumed; do
    perf record -e cpu-clock -F $FREQ -g -p "$LGP" -o "$OUT/perf-hs-$kind.data" 2>>"$OUT/perf-record.log" &
    PERFP=$!; PIDS+=($PERFP)
    sleep 1
    if [ $kind = full ]; then N=$HS_FULL_N; X=(); else N=$HS_RES_N; X=(--resume); fi
    taskset -c $CC "$BENCH" handshake "${HSARGS[@]}" -n "$N" "${X[@]}" >&2
    kill -INT "$PERFP"; wait "$PERFP" || true
    perf script -i "$OUT/perf-hs-$kind.data" -F comm,ip,sym 2>/dev/null |
        awk -v f=$FREQ -v conns="$N" -f benches/forward/buckets-handshake.awk >"$OUT/perf-hs-$kind-buckets.txt"
done
kill -TERM "$LGP"; wait "$LGP" || true

echo "== handshakes: callgrind, $HS_CG_N full handshakes (signature operations per handshake)" >&2
PORT=$("$BENCH" free-port); ADMIN=$("$BENCH" free-port)
config "$PORT" "$ADMIN" | sed "s/^upstream = .*/upstream = \"127.0.0.1:$ECHO\"/" >"$OUT/hs-cg.toml"
taskset -c $SC valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$OUT/callgrind-hs.out" \
    "$LG" serve --config "$OUT/hs-cg.toml" 2>"$OUT/cg-hs-lakegate.log" &
CGP=$!; PIDS+=($CGP)
"$BENCH" wait-http --port "$ADMIN"
callgrind_control -i on "$CGP" >/dev/null
HSARGS=(--connect "127.0.0.1:$PORT" --ca "$OUT/ca.crt" --cert "$OUT/alice.crt" --key "$OUT/alice.key" --threads 1)
taskset -c $CC "$BENCH" handshake "${HSARGS[@]}" -n "$HS_CG_N" >&2
callgrind_control -i off "$CGP" >/dev/null
kill -TERM "$CGP"; wait "$CGP" || true
callgrind_annotate --tree=calling "$OUT/callgrind-hs.out" >"$OUT/cg-hs-calling.txt" 2>/dev/null || true
callgrind_annotate --inclusive=yes "$OUT/callgrind-hs.out" >"$OUT/cg-hs-inclusive-full.txt" 2>/dev/null || true
{
    echo "$HS_CG_N full handshakes; calls (Ir inclusive) of the signature primitives:"
    grep -E "^ *[0-9,]+ \([ 0-9.]+%\)  >   .*(ECDSA_do_verify|ECDSA_do_sign|RSA_sign_pss_mgf1|RSA_sign|RSA_verify) \(" "$OUT/cg-hs-calling.txt" | sort -u | cut -c1-160 || true
    echo "callers of webpki::signed_data::verify_signed_data / CRL verify_signature / CertificateVerify:"
    grep -E "build_chain_inner|check_crls|verify_signature|ExpectCertificateVerify as|emit_certificate_verify_tls13|SupportedKxGroup::start_and_complete|sha256_block_data_order \[|PROGRAM TOTALS" "$OUT/cg-hs-inclusive-full.txt" | grep -v "( 0.00%)" | awk 'NR <= 12' | cut -c1-200 || true
} >"$OUT/cg-hs.txt"

echo "== callgrind, $CG_BYTES upload" >&2
PORT=$("$BENCH" free-port); ADMIN=$("$BENCH" free-port)
config "$PORT" "$ADMIN" >"$OUT/cg.toml"
taskset -c $SC valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$OUT/callgrind.out" \
    "$LG" serve --config "$OUT/cg.toml" 2>"$OUT/cg-lakegate.log" &
CGP=$!; PIDS+=($CGP)
"$BENCH" wait-http --port "$ADMIN"
callgrind_control -i on "$CGP" >/dev/null
taskset -c $CC "$BENCH" upload --connect "127.0.0.1:$PORT" --bytes "$CG_BYTES" "${TLSARGS[@]}" >&2
callgrind_control -i off "$CGP" >/dev/null
kill -TERM "$CGP"; wait "$CGP" || true
callgrind_annotate --inclusive=yes "$OUT/callgrind.out" >"$OUT/cg-inclusive-full.txt" 2>/dev/null || true
head -60 "$OUT/cg-inclusive-full.txt" >"$OUT/cg-inclusive.txt"
callgrind_annotate "$OUT/callgrind.out" >"$OUT/cg-self-full.txt" 2>/dev/null || true
head -45 "$OUT/cg-self-full.txt" >"$OUT/cg-self.txt"
# who calls memcpy (callers of __memcpy_avx_unaligned_erms, by inclusive Ir)
callgrind_annotate --tree=caller "$OUT/callgrind.out" >"$OUT/cg-callers-full.txt" 2>/dev/null || true
awk '/\*  .*__memcpy_avx_unaligned_erms/ { for (i = NR - 1; i > 0 && l[i] ~ /</; i--) print l[i]; exit } { l[NR] = $0 }' "$OUT/cg-callers-full.txt" |
    sed 's/,//g' | sort -k1 -rn | head -5 | cut -c1-200 >"$OUT/cg-memcpy-callers.txt"

for f in perf-stat perf-dso perf-self perf-buckets perf-breakdown perf-haproxy-self perf-haproxy-buckets perf-haproxy-breakdown ops ops-haproxy perf-hs-full-buckets perf-hs-resumed-buckets cg-hs cg-inclusive cg-self cg-memcpy-callers; do
    echo "### $f"
    echo '```'
    cat "$OUT/$f.txt"
    echo '```'
done
echo "(raw data in $OUT)"
