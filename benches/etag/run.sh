#!/usr/bin/env bash
# The single-part ETag choice end to end: server CPU-seconds per GiB of curl PUTs of
# one 1 GiB object (single part, TLS 1.3, one keep-alive-free request each) with
# [backend] etag = "sha256" and etag = "md5", RUNS times each, alternating; server CPU =
# utime+stime from /proc/PID/stat around each PUT. workers = 1, fsync = "never", the
# store under a temporary folder of /tmp (deleted at exit). Prints a Markdown table.
#
#   benches/etag/run.sh            # RUNS=3
#
# The in-process part (the hashing alone) is `cargo bench --bench etag`.
set -euo pipefail
cd "$(dirname "$0")/../.."
. benches/lib.sh
RUNS=${RUNS:-3}
cargo build --release 2>&1 | tail -1 >&2
LG=$PWD/target/release/lakegate
bench_tmp TMP /tmp/lakegate-etag.XXXXXX
lab_pki "$TMP"
head -c 1G /dev/urandom >"$TMP/obj.bin"
declare -A RES
for run in $(seq "$RUNS"); do
    for etag in sha256 md5; do
        port=$(free_port)
        mkdir -p "$TMP/store-$etag/datasets"
        lab_config "$TMP" "$port" "" --no-crl --server "workers = 1" --backend 'kind = "store"' \
            --backend "root = \"store-$etag\"" --backend 'fsync = "never"' --backend "etag = \"$etag\"" \
            >"$TMP/lg-$etag.toml"
        "$LG" serve --config "$TMP/lg-$etag.toml" 2>"$TMP/log-$etag" &
        PID=$!
        PIDS+=("$PID")
        for _ in $(seq 100); do curl -s -o /dev/null --cacert "$TMP/ca.crt" --cert "$TMP/alice.crt" --key "$TMP/alice.key" "https://127.0.0.1:$port/datasets?list-type=2" && break; sleep 0.1; done
        c0=$(cpu_total "$PID" 3)
        etag_got=$(curl -sf -D - -o /dev/null --cacert "$TMP/ca.crt" --cert "$TMP/alice.crt" --key "$TMP/alice.key" \
            -T "$TMP/obj.bin" "https://127.0.0.1:$port/datasets/obj.bin" | tr -d '\r' | sed -n 's/^etag: //Ip')
        c1=$(cpu_total "$PID" 3)
        kill "$PID"; wait "$PID" 2>/dev/null || true
        rm -rf "$TMP/store-$etag"
        RES[$etag]="${RES[$etag]:-} $(awk -v a="$c0" -v b="$c1" 'BEGIN { printf "%.3f", b - a }')"
        echo "run $run etag=$etag ETag $etag_got CPU-s ${RES[$etag]##* }" >&2
    done
done
read -ra SR <<<"${RES[sha256]}"; read -ra MR <<<"${RES[md5]}"
S=$(median "${SR[@]}"); M=$(median "${MR[@]}")
echo "| curl PUT of 1 GiB (median of $RUNS) | server CPU-s/GiB | runs | vs sha256 |"
echo "| --- | ---: | --- | ---: |"
echo "| etag = \"sha256\" | $S |${RES[sha256]} | 1.00x |"
awk -v m="$M" -v s="$S" -v r="${RES[md5]}" 'BEGIN { printf "| etag = \"md5\" | %s |%s | %.2fx |\n", m, r, m / s }'
