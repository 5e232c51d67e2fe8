#!/usr/bin/env bash
# Server instructions per mTLS handshake, counted by callgrind: a figure that does not
# move with the noise of a shared VM, for changes worth a few per cent of a handshake
# (the compare bench's ratios to HAProxy wander by more than that between runs).
#
#   benches/compare/handshake-instructions.sh OLD_BINARY NEW_BINARY
#   KEYS='rsa ecdsa' MODES='full resumed' DUR=10s ROUNDS=2 benches/compare/handshake-instructions.sh A B
#   NEW_ENV='LAKEGATE_LOG=warn' benches/compare/handshake-instructions.sh BIN BIN   # one binary, two settings
#
# OLD_ENV / NEW_ENV: environment assignments for each server (e.g. its log filter).
# Each binary serves forward mode with one worker under `valgrind --tool=callgrind`
# (instrumentation off until the load starts, so start-up is not counted); `lakegate
# load --mode handshake` (the NEW binary, 4 connection slots, `--resume` for resumed)
# runs DUR against it, then the instruction count of the server's user space (Ir) is
# divided by the handshakes the client completed. Kernel work is not in it; valgrind
# hides AVX-512 from aws-lc, so the RSA share differs from a native run. Rounds
# alternate the binaries.
set -euo pipefail
cd "$(dirname "$0")/../.."
. benches/lib.sh
[ $# -eq 2 ] || die "usage: $0 OLD_BINARY NEW_BINARY"
OLD=$(realpath "$1")
NEW=$(realpath "$2")
KEYS=${KEYS:-rsa ecdsa}
MODES=${MODES:-full resumed}
DUR=${DUR:-10s}
ROUNDS=${ROUNDS:-2}
command -v valgrind >/dev/null || die "valgrind is not installed (apt-get install valgrind)"
bench_tmp T /tmp/lakegate-hs-instr.XXXXXX

# The relay's upstream: accepts and discards.
sink_port=$(free_port)
python3 -c 'import socket, sys, threading
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(1000)
def h(c):
    while c.recv(65536): pass
    c.close()
while True:
    c, _ = s.accept(); threading.Thread(target=h, args=(c,), daemon=True).start()' "$sink_port" &
PIDS+=($!)
wait_port "$sink_port"

LG=$NEW
for k in $KEYS; do
    case $k in ecdsa) kt=ecdsa-p256 ;; rsa) kt=rsa2048 ;; *) die "key $k: ecdsa or rsa" ;; esac
    lab_pki "$T/pki-$k" --key-type "$kt"
done

echo "| key | handshake | binary | round | handshakes | server Ir | Ir per handshake |"
echo "|---|---|---|---|---|---|---|"
declare -A per
for k in $KEYS; do
    for mode in $MODES; do
        for r in $(seq "$ROUNDS"); do
            for which in old new; do
                bin=$OLD; envs=${OLD_ENV:-}
                [ $which = new ] && { bin=$NEW; envs=${NEW_ENV:-}; }
                port=$(free_port)
                lab_config "$T/pki-$k" "$port" "" --server "workers = 1" \
                    --server 'idle_timeout = "900s"' --backend 'kind = "forward"' \
                    --backend "upstream = \"127.0.0.1:$sink_port\"" >"$T/$k.toml"
                out=$T/cg-$which-$k-$mode-$r.out
                # shellcheck disable=SC2086
                env $envs valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out" \
                    "$bin" serve --config "$T/$k.toml" 2>"$T/valgrind.log" &
                vp=$!
                PIDS+=($vp)
                wait_port "$port" 600
                extra=()
                [ "$mode" = resumed ] && extra=(--resume)
                callgrind_control -i on "$vp" >/dev/null 2>&1
                "$NEW" load --target "127.0.0.1:$port" --ca "$T/pki-$k/ca.crt" \
                    --cert "$T/pki-$k/alice.crt" --key "$T/pki-$k/alice.key" --backend forward \
                    --cores 1 --no-progress --json "$T/load.json" --mode handshake \
                    --connections 4 --duration "$DUR" "${extra[@]}" >/dev/null 2>&1
                callgrind_control -i off "$vp" >/dev/null 2>&1
                kill -TERM "$vp"
                wait "$vp" 2>/dev/null || true
                line=$(python3 - "$T/load.json" "$out" "$mode" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
full, resumed = d["handshakes"]["full"], d["handshakes"]["resumed"]
ir = 0
for l in open(sys.argv[2]):
    if l.startswith(("summary:", "totals:")):
        ir = max(ir, int(l.split()[1]))
n = resumed if sys.argv[3] == "resumed" else full
# A resumed run starts with one full handshake per slot; its cost is spread over the rest.
print(full + resumed, ir, ir // max(1, full + resumed), n)
PY
)
                read -r n ir each counted <<<"$line"
                [ "$counted" -gt 0 ] || die "$which $k $mode: no $mode handshakes"
                echo "| $k | $mode | $which $(basename "$bin")${envs:+ $envs} | $r | $n | $ir | $each |"
                per[$which-$k-$mode]="${per[$which-$k-$mode]:-} $each"
            done
        done
    done
done
echo
echo "| key | handshake | old Ir per handshake (median) | new | new / old |"
echo "|---|---|---|---|---|"
for k in $KEYS; do
    for mode in $MODES; do
        # shellcheck disable=SC2086
        o=$(median ${per[old-$k-$mode]})
        # shellcheck disable=SC2086
        n=$(median ${per[new-$k-$mode]})
        echo "| $k | $mode | $(calc "$o" 0) | $(calc "$n" 0) | $(calc "$n / $o" 4) |"
    done
done
