#!/usr/bin/env bash
# Print every knob the lakegate tuning scripts set: its current value beside the
# recommended one. Read-only; needs no root (a few values are root-only to read).
# Exit 0, or with --strict exit 1 when any row is DIFF. See tuning/README.md.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: check.sh [--iface IFACE] [--cores LIST] [--strict]

  --iface IFACE   the NIC lakegate listens on (default: the default-route interface)
  --cores LIST    the worker cores, as in lakegate's [server] cores
                  (default: every online CPU, like workers = "auto", cores = [])
  --strict        exit 1 if any row is DIFF

STATUS: OK matches, DIFF differs (the matching script fixes it), SKIP cannot be
checked here (says why), INFO advice only, never a DIFF.
EOF
}

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$here/common.sh"

iface="" cores_arg="" strict=0
while [[ $# -gt 0 ]]; do
    case $1 in
    --iface) iface=${2:?--iface needs a value}; shift 2 ;;
    --cores) cores_arg=${2:?--cores needs a value}; shift 2 ;;
    --strict) strict=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument $1" ;;
    esac
done
if [[ -z $cores_arg ]]; then
    cores_arg="0-$(($(nproc) - 1))"
fi
cores=$(parse_cores "$cores_arg")
IFS=, read -r -a cs <<<"$cores"
n=${#cs[@]}
if [[ -z $iface ]]; then
    iface=$(awk '$2 == "00000000" && $8 == "00000000" { print $1; exit }' /proc/net/route 2>/dev/null || true)
fi

diffs=0
row() { # knob current recommended status
    printf '%-40s %-26s %-28s %s\n' "$1" "$2" "$3" "$4"
    [[ $4 == DIFF ]] && diffs=$((diffs + 1))
    return 0
}
cmp_row() { # knob current recommended [normalizer]
    local norm=${4:-cat_value}
    if [[ $($norm "$2") == "$($norm "$3")" ]]; then row "$1" "$2" "$3" OK; else row "$1" "$2" "$3" DIFF; fi
}
read_value() { tr -s ' \t' '  ' <"$1" 2>/dev/null | sed 's/^ //; s/ $//'; }

say "lakegate host check: worker cores $cores, interface ${iface:-(none)}"
row KNOB CURRENT RECOMMENDED STATUS

# sysctls (tuning/sysctl.sh)
for entry in "${SYSCTL_KNOBS[@]}"; do
    IFS='|' read -r key rec policy <<<"$entry"
    case $policy in min) shown=">= $rec" ;; range) shown="within $rec" ;; esac
    [[ $key == net.ipv4.tcp_[rw]mem ]] && shown=">= ($rec)"
    if ! cur=$(sysctl_get "$key"); then
        row "$key" "(absent)" "$shown" SKIP
    elif [[ $(sysctl_target "$cur" "$rec" "$policy") == "$cur" ]]; then
        row "$key" "$cur" "$shown" OK
    else
        row "$key" "$cur" "$shown" DIFF
    fi
done

# io_uring may be switched off host-wide (Linux 6.6+).
if cur=$(sysctl_get kernel.io_uring_disabled); then
    cmp_row kernel.io_uring_disabled "$cur" 0
else
    row kernel.io_uring_disabled "(absent)" 0 OK
fi

# The unit's limits, as systemd applies them (systemd/lakegate.service).
if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null 2>&1 &&
    [[ $(systemctl show -p LoadState --value lakegate.service 2>/dev/null) == loaded ]]; then
    nofile=$(systemctl show -p LimitNOFILE --value lakegate.service)
    memlock=$(systemctl show -p LimitMEMLOCK --value lakegate.service)
    if [[ $nofile =~ ^[0-9]+$ && $nofile -ge 1048576 ]]; then st=OK; else st=DIFF; fi
    row "lakegate.service LimitNOFILE" "$nofile" ">= 1048576" "$st"
    cmp_row "lakegate.service LimitMEMLOCK" "$memlock" infinity
else
    row "lakegate.service LimitNOFILE" "(unit not loaded)" ">= 1048576" SKIP
    row "lakegate.service LimitMEMLOCK" "(unit not loaded)" infinity SKIP
fi

# The NIC (tuning/rss-rps-xps.sh, tuning/irq-affinity.sh)
if [[ -z $iface ]]; then
    row "nic" "(no --iface, no default route)" "-" SKIP
elif [[ ! -e /sys/class/net/$iface ]]; then
    row "nic $iface" "(no such interface)" "-" SKIP
else
    q=$(queue_count "$iface" rx)
    tq=$(queue_count "$iface" tx)
    if chans=$(ethtool_combined "$iface"); then
        read -r max cur <<<"$chans"
        if [[ $max -eq 0 ]]; then
            row "$iface combined channels" "(none)" "-" SKIP
        else
            cmp_row "$iface combined channels" "$cur" "$((n < max ? n : max))"
        fi
    elif [[ $? -eq 2 ]]; then
        row "$iface combined channels" "(ethtool not installed)" "$n" SKIP
    else
        row "$iface combined channels" "(ethtool -l unsupported)" "$n" SKIP
    fi

    if [[ $q -eq $n ]]; then rps_want=0; else rps_want=$(cpus_to_mask "$cores"); fi
    for ((i = 0; i < q; i++)); do
        f=/sys/class/net/$iface/queues/rx-$i/rps_cpus
        if [[ -r $f ]]; then
            cmp_row "$iface rx-$i rps_cpus" "$(read_value "$f")" "$rps_want" norm_mask
        else
            row "$iface rx-$i rps_cpus" "(absent)" "$rps_want" SKIP
        fi
    done
    if [[ $tq -le 1 ]]; then
        row "$iface tx xps_cpus" "(single tx queue)" "-" SKIP
    else
        for ((i = 0; i < tq; i++)); do
            f=/sys/class/net/$iface/queues/tx-$i/xps_cpus
            want=$(cpus_to_mask "$(core_for_queue "$i" "$cores")")
            if [[ -r $f ]]; then
                cmp_row "$iface tx-$i xps_cpus" "$(read_value "$f")" "$want" norm_mask
            else
                row "$iface tx-$i xps_cpus" "(absent)" "$want" SKIP
            fi
        done
    fi

    mapfile -t irqs < <(iface_queue_irqs "$iface")
    bans=""
    if [[ ${#irqs[@]} -eq 0 ]]; then
        row "$iface queue irqs" "(none: virtual device?)" "-" SKIP
    fi
    for line in "${irqs[@]}"; do
        read -r irq qn name <<<"$line"
        core=$(core_for_queue "$qn" "$cores")
        cur=$(read_value "/proc/irq/$irq/smp_affinity_list" || echo '?')
        cmp_row "irq $irq ($name) affinity" "$cur" "$core" expand_cpulist
        bans+=" --banirq=$irq"
    done

    if ! irqbalance_installed; then
        row irqbalance "(not installed)" "stopped or banning" OK
    elif ! irqbalance_running; then
        row irqbalance "stopped" "stopped or banning" OK
    elif [[ ${#irqs[@]} -eq 0 ]]; then
        row irqbalance "running" "stopped or banning" OK
    else
        conf=$(irqbalance_conf)
        missing=0
        for b in $bans; do
            grep -q -- "$b\b" "$conf" 2>/dev/null || missing=$((missing + 1))
        done
        if [[ $missing -eq 0 ]]; then
            row irqbalance "running, bans NIC IRQs" "stopped or banning" OK
        else
            row irqbalance "running, $missing IRQ(s) not banned" "stopped or banning" DIFF
        fi
    fi
fi

# CPU isolation: kernel command line, advice only (see README.md).
cmdline=$(cat /proc/cmdline 2>/dev/null || true)
for param in isolcpus nohz_full rcu_nocbs; do
    cur=$(tr ' ' '\n' <<<"$cmdline" | sed -n "s/^$param=//p" | tail -n1)
    row "cmdline $param" "${cur:-(unset)}" "$cores (optional)" INFO
done

say ""
say "$diffs DIFF row(s)."
if [[ $strict -eq 1 && $diffs -gt 0 ]]; then
    exit 1
fi
exit 0
