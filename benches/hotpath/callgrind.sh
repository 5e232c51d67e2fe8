#!/usr/bin/env bash
# Instruction counts (callgrind Ir) of the hotpath benches' timed regions: unlike wall
# time they do not move with other load on the machine, so the ratios are stable.
# Counts only inside `hotpath_timed_*` functions, and not inside `hotpath_untimed_*`
# (the simulated socket read). Prints one Markdown row per bench: Ir per operation.
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v valgrind >/dev/null || { echo "needs valgrind (apt-get install valgrind)" >&2; exit 1; }
bin=$(cargo bench --bench hotpath --no-run --message-format=json 2>/dev/null |
  sed -n 's/.*"executable":"\([^"]*hotpath[^"]*\)".*/\1/p' | tail -1)
[ -x "$bin" ] || { echo "bench binary not found" >&2; exit 1; }
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
echo "| bench | ops | Ir total | Ir per op |"
echo "|---|---:|---:|---:|"
for b in aead_open tls_decrypt parse_put parse_get put floor; do
  ops=$(HOTPATH_CALLGRIND=$b valgrind --tool=callgrind --collect-atstart=no \
    --toggle-collect='*hotpath_timed_*' --toggle-collect='*hotpath_untimed_*' \
    --callgrind-out-file="$out/$b.out" "$bin" 2>"$out/$b.log" | sed -n 's/.*ops=\([0-9]*\).*/\1/p')
  ir=$(sed -n 's/^totals: \([0-9]*\).*/\1/p' "$out/$b.out")
  echo "| $b | $ops | $ir | $((ir / ops)) |"
done
