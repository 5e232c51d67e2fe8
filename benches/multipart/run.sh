#!/usr/bin/env bash
# Multipart vs single-part upload cost and CompleteMultipartUpload time; see README.md.
# Server pinned to core 0 (taskset), client to core 1, fsync = "never", root on tmpfs.
set -euo pipefail
cd "$(dirname "$0")/../.."
LG=$PWD/target/release/lakegate
PY=${PY:-$PWD/.venv-tests/bin/python}
RUNS=${RUNS:-3}
# The uploaded file and the multipart part size (boto3 TransferConfig threshold and
# chunk size); issue 12 asks for SIZE=4G PART_MIB=64.
SIZE=${SIZE:-1G}
PART_MIB=${PART_MIB:-8}
W=$(mktemp -d /dev/shm/lg-mpu-bench.XXXXXX)
trap 'kill "${SRV:-0}" 2>/dev/null || true; rm -rf "$W"' EXIT
$LG pki init --dir "$W" >/dev/null
$LG pki client --dir "$W" alice --spiffe spiffe://lake.example/trainer/alice >/dev/null
mkdir -p "$W/root/datasets"
head -c "$SIZE" /dev/urandom > "$W/src.bin"
PORT=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
cat > "$W/lg.toml" <<TOML
[server]
listen = "127.0.0.1:$PORT"
workers = 1
cores = [0]
steer_by_cpu = false
min_body_rate = "off"
[tls]
cert = "server.crt"
key = "server.key"
client_ca = "ca.crt"
[admin]
listen = ""
[backend]
kind = "store"
root = "root"
fsync = "never"
[[authz]]
identity = "spiffe://lake.example/trainer/*"
TOML
taskset -c 0 "$LG" serve --config "$W/lg.toml" 2>"$W/server.log" &
SRV=$!
for _ in $(seq 50); do (echo > "/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.1; done
echo "lakegate $(git rev-parse --short HEAD), $(nproc) cores, $(uname -r), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
taskset -c 1 "$PY" benches/multipart/measure.py "$PORT" "$W" "$SRV" "$W" "$RUNS" "$PART_MIB"
