# shellcheck shell=bash
# Shell helpers shared by the bench scripts (benches/*/run.sh, benches/forward/profile.sh).
# Source it, do not run it:
#
#   . "$(dirname "$0")/../lib.sh"
#
# One copy of what every script needs: CPU time and RSS of a process from /proc, medians
# and arithmetic, free ports and waiting for them, the lab PKI and the lab config (both
# made by the lakegate binary, from the template `lakegate demo` and the tests use), and
# one cleanup trap. Functions that run lakegate use $LG (the binary under test). Nothing
# here starts a process or changes directory when sourced.

TCK=$(getconf CLK_TCK)

log() { echo "$*" >&2; }
die() { echo "${0##*/}: $*" >&2; exit 1; }

# ---- cleanup ---------------------------------------------------------------------------
# PIDS: processes killed at exit; CLEANUP_DIRS: folders removed at exit unless KEEP_TMP is
# set. A script with more to undo defines bench_cleanup_hook, run first.
PIDS=()
CLEANUP_DIRS=()
bench_cleanup() {
    local p d
    if declare -F bench_cleanup_hook >/dev/null; then bench_cleanup_hook || true; fi
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    for d in "${CLEANUP_DIRS[@]}"; do
        if [ -n "${KEEP_TMP:-}" ]; then log "kept $d"; else rm -rf "$d"; fi
    done
}
trap bench_cleanup EXIT
# Without it, Ctrl-C ends the script without the EXIT trap's kill of the servers.
trap 'exit 130' INT TERM

# bench_tmp VAR TEMPLATE: VAR = a fresh folder (mktemp -d TEMPLATE), removed at exit. It
# sets VAR rather than printing, since a $(...) subshell would lose the CLEANUP_DIRS entry.
bench_tmp() {
    local d
    d=$(mktemp -d "$2")
    CLEANUP_DIRS+=("$d")
    printf -v "$1" '%s' "$d"
}

# ---- the build -------------------------------------------------------------------------
# bench_exe NAME -> path of the `cargo bench --bench NAME` executable (built if needed);
# cargo names it after the target with '-' become '_'.
bench_exe() {
    cargo bench --bench "$1" --no-run --message-format=json 2>/dev/null |
        sed -n "s/.*\"executable\":\"\\([^\"]*\\/${1//-/_}-[^\"]*\\)\".*/\\1/p" | tail -1
}

# source_rev -> what was measured: the commit, and whether src/ had changes on top.
source_rev() {
    if git rev-parse --git-dir >/dev/null 2>&1; then
        echo "git $(git rev-parse --short HEAD)$([ -z "$(git status --porcelain -- src)" ] || echo ' + uncommitted src changes')"
    else
        echo "tree $PWD$([ -f SNAPSHOT_OF ] && echo " (git archive of $(cut -c1-7 SNAPSHOT_OF))")"
    fi
}

# ---- /proc -----------------------------------------------------------------------------
# cpu_of PID -> "user system" CPU seconds of a process (all its threads, live and exited).
cpu_of() { awk -v t="$TCK" '{ printf "%.2f %.2f\n", $14 / t, $15 / t }' "/proc/$1/stat"; }
# cpu_total PID [DIGITS] -> user + system CPU seconds of a process.
cpu_total() { awk -v t="$TCK" -v d="${2:-2}" '{ printf "%.*f\n", d, ($14 + $15) / t }' "/proc/$1/stat"; }
# tree PID -> the process and all its descendants, one per line.
tree() {
    local c
    echo "$1"
    for c in $(pgrep -P "$1" || true); do tree "$c"; done
}
# rss PID -> resident set size in KiB.
rss() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }

# ---- numbers ---------------------------------------------------------------------------
# median X... -> the median (the mean of the middle two for an even count).
median() { printf '%s\n' "$@" | sed '/^$/d' | sort -g | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
# calc EXPR [DIGITS] -> awk arithmetic, DIGITS (default $CALC_DIGITS, else 3) decimals.
calc() { awk "BEGIN { printf \"%.${2:-${CALC_DIGITS:-3}}f\", $1 }"; }
# bytes SIZE -> SIZE (a number with an optional K, M or G suffix, binary) in bytes.
bytes() { awk -v b="$1" 'BEGIN { m = 1; u = substr(b, length(b)); if (u == "G") m = 1073741824; else if (u == "M") m = 1048576; else if (u == "K") m = 1024; n = (m > 1) ? substr(b, 1, length(b) - 1) : b; printf "%.0f", n * m }'; }
# kv "k=v k=v" KEY -> the value of KEY.
kv() { tr ' ' '\n' <<<"$1" | sed -n "s/^$2=//p"; }
# col I ROW... -> the I-th whitespace-separated field of each ROW, one per line.
col() {
    local i=$1 r
    shift
    for r in "$@"; do
        # shellcheck disable=SC2086 # split the row into fields on purpose
        set -- $r
        echo "${!i}"
    done
}

# ---- ports and readiness ---------------------------------------------------------------
# free_port -> a TCP port on 127.0.0.1 that was free a moment ago.
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# wait_file FILE [TRIES] -> until FILE is non-empty (TRIES x 50 ms, default 200).
wait_file() {
    local _
    for _ in $(seq "${2:-200}"); do [ -s "$1" ] && return 0; sleep 0.05; done
    log "timeout waiting for $1"
    return 1
}
# wait_port PORT [TRIES] -> until something accepts on 127.0.0.1:PORT.
wait_port() {
    local _
    for _ in $(seq "${2:-200}"); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.05
    done
    log "port $1 not listening"
    return 1
}
# wait_http URL [TRIES] -> until anything answers HTTP at URL (TRIES x 200 ms, default 300).
wait_http() {
    local _
    for _ in $(seq "${2:-300}"); do
        [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$1" || true)" != 000 ] && return 0
        sleep 0.2
    done
    log "nothing answers at $1"
    return 1
}

# ---- the lab ---------------------------------------------------------------------------
# lab_pki DIR [ARGS of `pki init`...] -> a CA and server certificate in DIR, the client
# alice (spiffe://lake.example/trainer/alice) and an empty CRL.
lab_pki() {
    local d=$1
    shift
    "$LG" pki init --dir "$d" "$@" >/dev/null
    "$LG" pki client --dir "$d" alice --spiffe spiffe://lake.example/trainer/alice >/dev/null
    "$LG" pki crl --dir "$d" >/dev/null
}

# lab_config DIR LISTEN_PORT ADMIN_PORT [ARGS of `pki config`...] -> the lab config on
# stdout: DIR's PKI, 127.0.0.1 listeners (ADMIN_PORT "" turns the admin endpoint off).
# ARGS add lines: --server 'workers = 1' --backend 'kind = "store"' --authz 'buckets = [..]'.
lab_config() {
    local d=$1 port=$2 admin=$3
    shift 3
    if [ -n "$admin" ]; then
        "$LG" pki config --dir "$d" --listen "127.0.0.1:$port" --admin "127.0.0.1:$admin" "$@"
    else
        "$LG" pki config --dir "$d" --listen "127.0.0.1:$port" "$@"
    fi
}
