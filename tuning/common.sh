# shellcheck shell=bash
# Helpers shared by the lakegate tuning scripts. Sourced, never run.
#
# Every change goes through apply_value / apply_file / apply_cmd, which honour
# DRY_RUN=1 (print "would ...", touch nothing) and do nothing when the value is
# already right, so every script is safe to rerun.

DRY_RUN=${DRY_RUN:-0}
FAILED=0

say() { printf '%s\n' "$*"; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}
skip() { printf 'skipped: %s\n' "$*"; }

require_root() {
    if [[ $DRY_RUN -eq 0 && $EUID -ne 0 ]]; then
        die "must run as root to change the host (or pass --dry-run to only print the plan)"
    fi
}

# The sysctls lakegate wants: name|recommended|policy.
#   min:   every field of the current value must be >= the recommended one; the
#          script only ever raises (a host tuned higher is left alone).
#   range: the current range must contain the recommended one.
# shellcheck disable=SC2034 # used by the scripts that source this file
SYSCTL_KNOBS=(
    "net.core.somaxconn|65535|min"
    "net.ipv4.tcp_max_syn_backlog|65535|min"
    "net.core.netdev_max_backlog|32768|min"
    "net.core.rmem_max|67108864|min"
    "net.core.wmem_max|67108864|min"
    "net.ipv4.tcp_rmem|4096 131072 67108864|min"
    "net.ipv4.tcp_wmem|4096 65536 67108864|min"
    "net.ipv4.ip_local_port_range|10240 65535|range"
    "fs.nr_open|2097152|min"
    "fs.file-max|4194304|min"
)

sysctl_path() { printf '/proc/sys/%s' "${1//.//}"; }

# Current value with runs of blanks/tabs squeezed to one space; fails if absent.
sysctl_get() {
    local p
    p=$(sysctl_path "$1")
    [[ -r $p ]] || return 1
    tr -s ' \t' '  ' <"$p" | sed 's/^ //; s/ $//'
}

# sysctl_target CURRENT RECOMMENDED POLICY -> the value to set (never lowers).
sysctl_target() {
    local -a cur rec out=()
    read -r -a cur <<<"$1"
    read -r -a rec <<<"$2"
    local i
    case $3 in
    min)
        for i in "${!rec[@]}"; do
            if [[ -n ${cur[i]:-} && ${cur[i]} -gt ${rec[i]} ]]; then
                out+=("${cur[i]}")
            else
                out+=("${rec[i]}")
            fi
        done
        ;;
    range)
        local lo=${rec[0]} hi=${rec[1]}
        [[ -n ${cur[0]:-} && ${cur[0]} -lt $lo ]] && lo=${cur[0]}
        [[ -n ${cur[1]:-} && ${cur[1]} -gt $hi ]] && hi=${cur[1]}
        out=("$lo" "$hi")
        ;;
    *) die "unknown sysctl policy $3" ;;
    esac
    printf '%s' "${out[*]}"
}

# "0-2,5" -> "0,1,2,5" (sorted, unique); fails on anything else.
expand_cpulist() {
    local list=${1// /} part a b c
    local -a cpus=()
    [[ $list =~ ^[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*$ ]] || return 1
    IFS=, read -r -a parts <<<"$list"
    for part in "${parts[@]}"; do
        if [[ $part == *-* ]]; then
            a=${part%-*} b=${part#*-}
            ((a <= b)) || return 1
            for ((c = a; c <= b; c++)); do cpus+=("$c"); done
        else
            cpus+=("$part")
        fi
    done
    printf '%s\n' "${cpus[@]}" | sort -n -u | paste -sd, -
}

# "0,1,2,3" -> sysfs CPU mask "f"; 32-bit groups separated by commas above 32 CPUs.
cpus_to_mask() {
    local -a words=()
    local c w max=0 i res=""
    IFS=, read -r -a cs <<<"$1"
    for c in "${cs[@]}"; do ((c > max)) && max=$c; done
    for ((i = 0; i <= max / 32; i++)); do words[i]=0; done
    for c in "${cs[@]}"; do
        w=$((c / 32))
        words[w]=$((words[w] | (1 << (c % 32))))
    done
    for ((i = max / 32; i >= 0; i--)); do
        if [[ -z $res ]]; then
            res=$(printf '%x' "${words[i]}")
        else
            res+=$(printf ',%08x' "${words[i]}")
        fi
    done
    printf '%s' "$res"
}

# Sysfs masks compare equal regardless of width: "00000000,0000000f" == "f".
norm_mask() {
    local m=${1//,/}
    m=${m,,}
    while [[ $m == 0* ]]; do m=${m#0}; done
    printf '%s' "${m:-0}"
}

# Validates --cores against the CPUs the host has; prints the expanded list.
parse_cores() {
    local list c
    list=$(expand_cpulist "$1") || die "--cores: expected a list like \"0,1,2,3\" or \"0-3\", got \"$1\""
    IFS=, read -r -a cs <<<"$list"
    for c in "${cs[@]}"; do
        [[ -d /sys/devices/system/cpu/cpu$c ]] || die "--cores: CPU $c does not exist on this host"
    done
    printf '%s' "$list"
}

# apply_value PATH WANT [NORMALIZER]: write WANT to a sysfs/procfs file unless it
# already holds it (compared through NORMALIZER, e.g. norm_mask or expand_cpulist).
apply_value() {
    local path=$1 want=$2 norm=${3:-cat_value} cur
    if [[ ! -e $path ]]; then
        skip "$path does not exist"
        return 0
    fi
    cur=$(tr -s ' \t' '  ' <"$path" 2>/dev/null | sed 's/^ //; s/ $//') || cur="?"
    if [[ $($norm "$cur") == "$($norm "$want")" ]]; then
        say "ok: $path = $cur"
    elif [[ $DRY_RUN -eq 1 ]]; then
        say "would write '$want' to $path (now '$cur')"
    elif printf '%s\n' "$want" 2>/dev/null >"$path"; then
        say "wrote '$want' to $path (was '$cur')"
    else
        warn "could not write '$want' to $path (still '$cur')"
        FAILED=$((FAILED + 1))
    fi
}
cat_value() { printf '%s' "$1"; }

# apply_file PATH CONTENT: replace a config file when its content differs.
apply_file() {
    local path=$1 content=$2
    if [[ -f $path && "$(cat "$path")" == "$content" ]]; then
        say "ok: $path is up to date"
    elif [[ $DRY_RUN -eq 1 ]]; then
        say "would write $path:"
        printf '%s\n' "$content" | sed 's/^/    | /'
    else
        mkdir -p "$(dirname "$path")"
        local tmp
        tmp=$(mktemp "$path.XXXXXX")
        printf '%s\n' "$content" >"$tmp"
        chmod 0644 "$tmp"
        mv -f "$tmp" "$path"
        say "wrote $path"
    fi
}

# apply_cmd CMD...: run a command, or print it under --dry-run.
apply_cmd() {
    if [[ $DRY_RUN -eq 1 ]]; then
        say "would run: $*"
    elif "$@"; then
        say "ran: $*"
    else
        warn "failed: $*"
        FAILED=$((FAILED + 1))
    fi
}

# Interface checks: exits 0 with a "skipped" line when there is nothing to tune.
iface_or_skip() {
    [[ -n $1 ]] || die "--iface is required"
    if [[ ! -e /sys/class/net/$1 ]]; then
        skip "interface $1 does not exist (ip -o link lists the interfaces)"
        exit 0
    fi
}

# The queue IRQs of an interface, one "IRQ QUEUE NAME" line each, by queue.
# Found by name in /proc/interrupts: "<iface>-TxRx-3", "<iface>-rx-0" (ixgbe, i40e,
# ice, bnxt, ...), "<dev>-input.2"/"<dev>-output.2" (virtio_net, whose vectors are
# named after the virtio device), "mlx5_comp3@pci:<addr>" (mlx5); and the device's
# MSI vectors when none match by name. Control vectors (config, async, misc, link,
# mbx, event) are left out: they are not per-queue.
iface_queue_irqs() {
    local iface=$1 dev="" pci="" devpath
    devpath=$(readlink -f "/sys/class/net/$iface/device" 2>/dev/null || true)
    if [[ -n $devpath ]]; then
        dev=$(basename "$devpath")
        # virtio: the PCI function is the parent of virtioN.
        if [[ $dev == virtio* ]]; then pci=$(basename "$(dirname "$devpath")"); else pci=$dev; fi
    fi
    local msi=""
    for d in "$devpath/msi_irqs" "$(dirname "${devpath:-/nonexistent}")/msi_irqs"; do
        if [[ -n $devpath && -d $d ]]; then
            msi=" $(find "$d" -mindepth 1 -maxdepth 1 -printf '%f ' 2>/dev/null) "
            break
        fi
    done
    awk -v iface="$iface" -v dev="$dev" -v pci="$pci" -v msi="$msi" '
        $1 ~ /^[0-9]+:$/ {
            irq = substr($1, 1, length($1) - 1)
            name = $NF
            mine = 0; rest = name
            if (index(name, iface "-") == 1 || index(name, iface "_") == 1) {
                mine = 1; rest = substr(name, length(iface) + 2)
            } else if (dev != "" && index(name, dev "-") == 1) {
                mine = 1; rest = substr(name, length(dev) + 2)
            } else if (pci != "" && index(name, "@pci:" pci) > 0) {
                mine = 1
            } else if (dev != "" && index(msi, " " irq " ") > 0) {
                mine = 2
            }
            if (!mine) next
            lname = tolower(rest)
            if (lname ~ /(config|async|misc|link|mbx|mailbox|event|ctrl|cmd|pages|fw)/) next
            sub(/@.*/, "", lname)
            q = -1
            if (match(lname, /[0-9]+$/)) q = substr(lname, RSTART) + 0
            # by-MSI only: keep vectors that look like queues.
            if (mine == 2 && lname !~ /(rx|tx|input|output|queue|comp|fp)/) next
            print irq, q, name
        }' /proc/interrupts | awk '{ if ($2 < 0) $2 = n; n++; print }' | sort -k2,2n -k1,1n
}

# The worker core that serves queue Q: cores[Q mod n].
core_for_queue() {
    local q=$1 list=$2
    IFS=, read -r -a cs <<<"$list"
    printf '%s' "${cs[q % ${#cs[@]}]}"
}

# "max current" combined channels from ethtool -l, or fails (no ethtool, unsupported).
ethtool_combined() {
    command -v ethtool >/dev/null 2>&1 || return 2
    local out
    out=$(ethtool -l "$1" 2>/dev/null) || return 1
    awk '/^Pre-set maximums/ { s = 1 } /^Current hardware settings/ { s = 2 }
         /^Combined:/ { v[s] = $2 }
         END { if (v[1] == "" || v[2] == "") exit 1; print v[1] + 0, v[2] + 0 }' <<<"$out"
}

queue_count() { find "/sys/class/net/$1/queues" -mindepth 1 -maxdepth 1 -name "$2-*" 2>/dev/null | wc -l; }

# irqbalance's config file: Debian/Ubuntu /etc/default, RHEL/SUSE /etc/sysconfig.
irqbalance_conf() {
    if [[ -f /etc/sysconfig/irqbalance ]]; then
        printf '/etc/sysconfig/irqbalance'
    else
        printf '/etc/default/irqbalance'
    fi
}
irqbalance_installed() { command -v irqbalance >/dev/null 2>&1 || [[ -x /usr/sbin/irqbalance ]]; }
irqbalance_running() {
    systemctl is-active --quiet irqbalance 2>/dev/null || pgrep -x irqbalance >/dev/null 2>&1
}
# shellcheck disable=SC2034
IRQB_BEGIN="# BEGIN lakegate tuning/irq-affinity.sh (managed: rerun the script, do not edit)"
# shellcheck disable=SC2034
IRQB_END="# END lakegate tuning/irq-affinity.sh"
