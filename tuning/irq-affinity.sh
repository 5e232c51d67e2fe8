#!/usr/bin/env bash
# Pin each NIC queue's IRQ to the core of the lakegate worker that serves that queue,
# and keep irqbalance from moving them back. Run as root; idempotent; --dry-run prints
# the plan and changes nothing. See tuning/README.md.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: irq-affinity.sh --iface IFACE --cores LIST [--irqbalance ban|stop|leave] [--dry-run]

  --iface IFACE     the NIC lakegate listens on (e.g. eth0, ens1f0)
  --cores LIST      the worker cores, as in lakegate's [server] cores: "0,1,2,3" or "0-3"
                    (queue i is pinned to the i-th core, wrapping around)
  --irqbalance MODE ban   (default) add --banirq=N for these IRQs to IRQBALANCE_ARGS in
                          /etc/default/irqbalance (/etc/sysconfig/irqbalance on RHEL)
                          and restart irqbalance: it keeps balancing everything else
                    stop  stop and disable irqbalance altogether
                    leave do not touch irqbalance (it will undo the pinning)
  --dry-run         print what would change, change nothing
EOF
}

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$here/common.sh"

iface="" cores_arg="" mode=ban
while [[ $# -gt 0 ]]; do
    case $1 in
    --iface) iface=${2:?--iface needs a value}; shift 2 ;;
    --cores) cores_arg=${2:?--cores needs a value}; shift 2 ;;
    --irqbalance) mode=${2:?--irqbalance needs a value}; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument $1" ;;
    esac
done
[[ -n $cores_arg ]] || { usage >&2; die "--cores is required"; }
case $mode in ban | stop | leave) ;; *) die "--irqbalance: expected ban, stop or leave, got $mode" ;; esac
cores=$(parse_cores "$cores_arg")
iface_or_skip "$iface"
require_root
[[ $DRY_RUN -eq 1 ]] && say "dry run: nothing will be changed"

mapfile -t irqs < <(iface_queue_irqs "$iface")
if [[ ${#irqs[@]} -eq 0 ]]; then
    skip "$iface has no queue IRQs in /proc/interrupts (a virtual device such as lo," \
        "a bridge or a VLAN has none: tune the physical NIC under it)"
    exit 0
fi

say "$iface: ${#irqs[@]} queue IRQ(s), worker cores $cores"
banned=()
for line in "${irqs[@]}"; do
    read -r irq q name <<<"$line"
    core=$(core_for_queue "$q" "$cores")
    say "irq $irq ($name, queue $q) -> core $core"
    if [[ ! -w /proc/irq/$irq/smp_affinity_list && $DRY_RUN -eq 0 ]]; then
        warn "/proc/irq/$irq/smp_affinity_list is not writable"
    fi
    before=$FAILED
    apply_value "/proc/irq/$irq/smp_affinity_list" "$core" expand_cpulist
    if [[ $FAILED -gt $before ]]; then
        warn "irq $irq may be kernel-managed (its driver spreads it, writes get EIO): leave it"
    fi
    banned+=("--banirq=$irq")
done

# irqbalance rewrites IRQ affinities every 10 s; it must not touch ours.
if ! irqbalance_installed; then
    say "irqbalance is not installed: nothing will move these IRQs"
elif [[ $mode == leave ]]; then
    warn "--irqbalance leave: irqbalance will move these IRQs again within seconds"
elif [[ $mode == stop ]]; then
    if irqbalance_running; then
        apply_cmd systemctl disable --now irqbalance
    else
        say "ok: irqbalance is not running"
        if systemctl is-enabled --quiet irqbalance 2>/dev/null; then
            apply_cmd systemctl disable irqbalance
        fi
    fi
else
    conf=$(irqbalance_conf)
    existing=""
    if [[ -f $conf ]]; then
        # The last IRQBALANCE_ARGS outside our block, without our --banirq flags.
        existing=$(awk -v b="$IRQB_BEGIN" -v e="$IRQB_END" '
            $0 == b { skip = 1; next } $0 == e { skip = 0; next }
            !skip && /^[[:space:]]*IRQBALANCE_ARGS=/ { v = $0 }
            END { sub(/^[[:space:]]*IRQBALANCE_ARGS=/, "", v); gsub(/^["'\'']|["'\'']$/, "", v); print v }' "$conf")
        rest=$(awk -v b="$IRQB_BEGIN" -v e="$IRQB_END" '
            $0 == b { skip = 1; next } $0 == e { skip = 0; next } !skip' "$conf")
    else
        rest=""
    fi
    args="$existing ${banned[*]}"
    args=${args# }
    block="$IRQB_BEGIN
IRQBALANCE_ARGS=\"$args\"
$IRQB_END"
    if [[ -n $rest ]]; then content="$rest
$block"; else content=$block; fi
    if [[ -f $conf && "$(cat "$conf")" == "$content" ]]; then
        say "ok: $conf already bans ${banned[*]}"
    else
        apply_file "$conf" "$content"
        if irqbalance_running; then
            apply_cmd systemctl restart irqbalance
        fi
    fi
fi

if [[ $FAILED -gt 0 ]]; then
    warn "$FAILED change(s) failed"
    exit 1
fi
say "IRQ numbers can change when the driver reloads or the host reboots: rerun this" \
    "script at boot, before lakegate starts (see tuning/README.md)."
