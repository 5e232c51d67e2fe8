#!/usr/bin/env bash
# Kernel settings for many concurrent TLS connections and large buffers: writes
# /etc/sysctl.d/90-lakegate.conf (so they survive a reboot) and applies it now.
# Values are only ever raised: a host already tuned higher keeps its values.
# Run as root; idempotent; --dry-run prints the plan and changes nothing.
# See tuning/README.md.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: sysctl.sh [--dry-run] [--file PATH]

  --file PATH   where to write the settings (default /etc/sysctl.d/90-lakegate.conf)
  --dry-run     print what would change, change nothing
EOF
}

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$here/common.sh"

file=/etc/sysctl.d/90-lakegate.conf
while [[ $# -gt 0 ]]; do
    case $1 in
    --file) file=${2:?--file needs a value}; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument $1" ;;
    esac
done
require_root
[[ $DRY_RUN -eq 1 ]] && say "dry run: nothing will be changed"

content="# Written by lakegate tuning/sysctl.sh: rerun the script rather than editing.
# Minimums for lakegate; values already higher on this host were kept.
# See tuning/README.md for what each one does."
declare -A target=()
keys=()
for entry in "${SYSCTL_KNOBS[@]}"; do
    IFS='|' read -r key rec policy <<<"$entry"
    if ! cur=$(sysctl_get "$key"); then
        skip "$key: not present in this kernel / namespace ($(sysctl_path "$key"))"
        continue
    fi
    target[$key]=$(sysctl_target "$cur" "$rec" "$policy")
    keys+=("$key")
    content+="
$key = ${target[$key]}"
done

apply_file "$file" "$content"

# Apply now (what `sysctl -p FILE` would do), one key at a time so each result shows.
for key in "${keys[@]}"; do
    apply_value "$(sysctl_path "$key")" "${target[$key]}"
done

say "note: lakegate.service sets LimitNOFILE=1048576 (one fd per connection, plus one per"
say "      open object or upstream); it must stay <= fs.nr_open ($(sysctl_get fs.nr_open || echo '?') now)."
say "      Raise both together for max_connections above ~300000."

if [[ $FAILED -gt 0 ]]; then
    warn "$FAILED setting(s) could not be applied (in a container, host-wide fs.* and"
    warn "some net.* keys are read-only): they take effect where $file is read at boot"
    exit 1
fi
