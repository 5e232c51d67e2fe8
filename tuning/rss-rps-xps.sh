#!/usr/bin/env bash
# Match the NIC's RSS queues to lakegate's workers, turn RPS on only when there are
# fewer hardware queues than workers, and point each TX queue (XPS) at its worker's
# core. Run as root; idempotent; --dry-run prints the plan and changes nothing.
# See tuning/README.md.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: rss-rps-xps.sh --iface IFACE --cores LIST [--dry-run]

  --iface IFACE   the NIC lakegate listens on
  --cores LIST    the worker cores, as in lakegate's [server] cores: "0,1,2,3" or "0-3"
  --dry-run       print what would change, change nothing
EOF
}

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$here/common.sh"

iface="" cores_arg=""
while [[ $# -gt 0 ]]; do
    case $1 in
    --iface) iface=${2:?--iface needs a value}; shift 2 ;;
    --cores) cores_arg=${2:?--cores needs a value}; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument $1" ;;
    esac
done
[[ -n $cores_arg ]] || { usage >&2; die "--cores is required"; }
cores=$(parse_cores "$cores_arg")
iface_or_skip "$iface"
require_root
[[ $DRY_RUN -eq 1 ]] && say "dry run: nothing will be changed"

IFS=, read -r -a cs <<<"$cores"
n=${#cs[@]}
q=$(queue_count "$iface" rx)
tq=$(queue_count "$iface" tx)
say "$iface: $q RX queue(s) now, $n worker core(s): $cores"

# 1. RSS: one combined channel (an RX+TX queue pair with its own IRQ) per worker.
if chans=$(ethtool_combined "$iface"); then
    read -r max cur <<<"$chans"
    want=$((n < max ? n : max))
    if [[ $max -eq 0 ]]; then
        skip "channels: $iface has no combined channels (separate rx/tx counts); set them by hand"
    elif [[ $cur -eq $want ]]; then
        say "ok: $iface combined channels = $cur"
    else
        apply_cmd ethtool -L "$iface" combined "$want"
        q=$want tq=$want
        [[ $DRY_RUN -eq 1 ]] && say "(the plan below assumes the $want queues that change would make)"
    fi
    if [[ $max -gt 0 && $max -lt $n ]]; then
        say "note: $iface has at most $max queues for $n workers: RPS spreads the rest"
    fi
else
    rc=$?
    if [[ $rc -eq 2 ]]; then
        skip "channels: ethtool is not installed (apt install ethtool / dnf install ethtool)"
    else
        skip "channels: ethtool -l $iface is not supported by this device"
    fi
fi

# 2. RPS: off when every worker has its own hardware queue (the NIC already steers
#    flows, a software hop would only add an IPI); otherwise spread each RX queue's
#    packets over the worker cores, so SO_INCOMING_CPU still lands on a worker.
if [[ $q -eq $n ]]; then
    rps_want=0
    say "RPS: $q RSS queues for $n workers: off"
else
    rps_want=$(cpus_to_mask "$cores")
    say "RPS: $q RSS queue(s) for $n workers: on, mask $rps_want (cores $cores)"
fi
for ((i = 0; i < q; i++)); do
    f=/sys/class/net/$iface/queues/rx-$i/rps_cpus
    if [[ ! -e $f && $DRY_RUN -eq 1 && -d /sys/class/net/$iface/queues/rx-0 ]]; then
        say "would write '$rps_want' to $f (after the channel change)"
        continue
    fi
    apply_value "$f" "$rps_want" norm_mask
done

# 3. XPS: TX queue i sends from worker i's core, so a worker never contends for
#    another worker's TX queue lock.
if [[ $tq -le 1 ]]; then
    skip "XPS: $iface has a single TX queue, there is nothing to choose"
else
    for ((i = 0; i < tq; i++)); do
        core=$(core_for_queue "$i" "$cores")
        f=/sys/class/net/$iface/queues/tx-$i/xps_cpus
        if [[ ! -e $f && $DRY_RUN -eq 1 && -d /sys/class/net/$iface/queues/tx-0 ]]; then
            say "would write '$(cpus_to_mask "$core")' to $f (after the channel change)"
            continue
        fi
        apply_value "$f" "$(cpus_to_mask "$core")" norm_mask
    done
fi

if [[ $FAILED -gt 0 ]]; then
    warn "$FAILED change(s) failed"
    exit 1
fi
say "ethtool -L does not survive a reboot: rerun this script at boot (see tuning/README.md)."
