#!/usr/bin/env bash
# Multipart vs single-part upload cost and CompleteMultipartUpload time; see README.md.
# Server pinned to core 0 (taskset), client to core 1, fsync = "never", root on tmpfs.
set -euo pipefail
cd "$(dirname "$0")/../.."
. benches/lib.sh
LG=$PWD/target/release/lakegate
PY=${PY:-$PWD/.venv-tests/bin/python}
RUNS=${RUNS:-3}
# The uploaded file and the multipart part size (boto3 TransferConfig threshold and
# chunk size); issue 12 asks for SIZE=4G PART_MIB=64.
SIZE=${SIZE:-1G}
PART_MIB=${PART_MIB:-8}
bench_tmp W /dev/shm/lg-mpu-bench.XXXXXX
lab_pki "$W"
mkdir -p "$W/root/datasets"
head -c "$SIZE" /dev/urandom > "$W/src.bin"
PORT=$(free_port)
lab_config "$W" "$PORT" "" --no-crl --server "workers = 1" --server "cores = [0]" \
    --server "steer_by_cpu = false" --server 'min_body_rate = "off"' \
    --backend 'kind = "store"' --backend 'root = "root"' --backend 'fsync = "never"' >"$W/lg.toml"
taskset -c 0 "$LG" serve --config "$W/lg.toml" 2>"$W/server.log" &
SRV=$!
PIDS+=("$SRV")
wait_port "$PORT" 100
echo "lakegate $(git rev-parse --short HEAD), $(nproc) cores, $(uname -r), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
taskset -c 1 "$PY" benches/multipart/measure.py "$PORT" "$W" "$SRV" "$W" "$RUNS" "$PART_MIB"
