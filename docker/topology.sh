#!/usr/bin/env bash
# The production topology of docker/compose.yaml without Docker: a fresh PostgreSQL database on
# the local server, two linkbridge replicas on loopback ports sharing it and one set of signing
# keys, and HAProxy (docker/haproxy/haproxy.cfg, the compose file's) in front.
#
#   docker/topology.sh [start] [BINARY] [--demo]   start everything in the background
#   docker/topology.sh status                       processes and the LB's view of the replicas
#   docker/topology.sh restart N                    stop replica N (1 or 2) if it runs, start
#                                                   it again, wait until the LB uses it
#   docker/topology.sh stop [--clean]               stop them (--clean: drop the database and
#                                                   the state directory too)
#
# BINARY defaults to $CARGO_TARGET_DIR/release/linkbridge (target/release/linkbridge). --demo
# also registers the demo clients (`linkbridge demo setup`) and prints how to get a token.
#
# Settings, from the environment (defaults in brackets):
#   TOPOLOGY_STATE_DIR     [${TMPDIR:-/tmp}/linkbridge-topology]  PIDs, logs, keys, LB config env
#   TOPOLOGY_POSTGRES      [postgres://postgres@127.0.0.1:5432]   a server where that user may
#                                                                  create databases
#   TOPOLOGY_DATABASE      [linkbridge_topology]                   dropped and created by start
#   TOPOLOGY_LB_PORT       [18080]   the load balancer: the public base URL is http://127.0.0.1:PORT
#   TOPOLOGY_REPLICA_PORTS [18081 18082]
#   TOPOLOGY_STATS_PORT    [18079]   HAProxy's statistics page (/stats, /stats;csv)
#   TOPOLOGY_HEALTH_TIMEOUT [60]     seconds to wait for each part to become healthy
# Other LINKBRIDGE_* variables (e.g. LINKBRIDGE_LOG) pass through to the replicas.
#
# HAProxy comes from Debian's packages: when it is missing and this runs as root with apt-get,
# start installs it (`apt-get install -y haproxy`).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/.." && pwd)"

state="${TOPOLOGY_STATE_DIR:-${TMPDIR:-/tmp}/linkbridge-topology}"
postgres="${TOPOLOGY_POSTGRES:-postgres://postgres@127.0.0.1:5432}"
postgres="${postgres%/}"
database="${TOPOLOGY_DATABASE:-linkbridge_topology}"
lb_port="${TOPOLOGY_LB_PORT:-18080}"
read -r -a replica_ports <<< "${TOPOLOGY_REPLICA_PORTS:-18081 18082}"
stats_port="${TOPOLOGY_STATS_PORT:-18079}"
health_timeout="${TOPOLOGY_HEALTH_TIMEOUT:-60}"

lb_url="http://127.0.0.1:${lb_port}"
database_url="${postgres}/${database}"

say() { printf 'topology: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
    exit "${1:-0}"
}

# --- processes ------------------------------------------------------------------------------

# The PID in $state/NAME.pid if that process is alive and still the one we started (its
# command line names what we ran, so a reused PID is never signalled).
live_pid() {
    local name="$1" expect="$2" pid
    [ -f "$state/$name.pid" ] || return 1
    pid="$(cat "$state/$name.pid")"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    # `grep >/dev/null`, not `grep -q`, here and below: -q may exit at the first match and,
    # under pipefail, the writer's SIGPIPE (exit 141) would fail the whole pipeline.
    tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -F -- "$expect" >/dev/null || return 1
    echo "$pid"
}

# Stops one process we started: SIGTERM (the server drains for up to 30 s), then SIGKILL.
stop_one() {
    local name="$1" expect="$2" pid
    if pid="$(live_pid "$name" "$expect")"; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 70); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.5
        done
        if kill -0 "$pid" 2>/dev/null; then
            say "$name ($pid) did not stop in 35 s: SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        say "stopped $name ($pid)"
    fi
    rm -f "$state/$name.pid"
}

port_in_use() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# The HTTP status of a GET (000 when nothing answers).
http_status() {
    curl -s -o /dev/null -m 3 -w '%{http_code}' "$1" 2>/dev/null || true
}

wait_for() {
    local what="$1" url="$2" name="$3"
    local deadline=$((SECONDS + health_timeout))
    while [ "$(http_status "$url")" != 200 ]; do
        if ! kill -0 "$(cat "$state/$name.pid")" 2>/dev/null; then
            say "$what exited; the end of $state/$name.log:"
            tail -n 20 "$state/$name.log" >&2 || true
            return 1
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            say "$what not healthy at $url after ${health_timeout}s; the end of $state/$name.log:"
            tail -n 20 "$state/$name.log" >&2 || true
            return 1
        fi
        sleep 0.5
    done
}

# How HAProxy sees the replicas: "linkbridge-1 UP" lines from the statistics CSV.
lb_servers() {
    { curl -s -m 3 "http://127.0.0.1:${stats_port}/stats;csv" 2>/dev/null || true; } \
        | awk -F, '$1 == "linkbridge" && $2 != "BACKEND" && $2 != "FRONTEND" { print $2, $18 }'
}

ensure_haproxy() {
    command -v haproxy >/dev/null && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        say "installing haproxy from Debian's packages"
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -q haproxy >/dev/null 2>&1 \
            || { apt-get update -q >/dev/null && apt-get install -y -q haproxy >/dev/null; }
        command -v haproxy >/dev/null && return 0
    fi
    die "haproxy is not installed (Debian: apt-get install -y haproxy)"
}

# Removes the state directory, only if it is one this script made (or empty): a mistaken
# TOPOLOGY_STATE_DIR is never wiped.
remove_state() {
    [ -e "$state" ] || return 0
    if [ -f "$state/binary" ] || [ -z "$(ls -A "$state")" ]; then
        rm -rf "$state"
    else
        die "$state exists and was not made by this script: not removing it (set TOPOLOGY_STATE_DIR)"
    fi
}

psql_admin() {
    PGOPTIONS='-c client_min_messages=warning' psql "${postgres}/postgres" -v ON_ERROR_STOP=1 -qAt "$@"
}

# Starts replica I in the background (its data directory exists), its PID in replica-I.pid.
start_replica() {
    local i="$1" binary="$2"
    (
        export LINKBRIDGE_DATABASE_URL="$database_url"
        export LINKBRIDGE_LISTEN="127.0.0.1:${replica_ports[$((i - 1))]}"
        export LINKBRIDGE_PUBLIC_BASE_URL="$lb_url"
        export LINKBRIDGE_DATA_DIR="$state/replica-$i"
        export LINKBRIDGE_DB_MAX_CONNECTIONS="${LINKBRIDGE_DB_MAX_CONNECTIONS:-8}"
        export LINKBRIDGE_WORKERS="${LINKBRIDGE_WORKERS:-2}"
        cd "$state/replica-$i"
        exec nohup "$binary" serve </dev/null >>"$state/replica-$i.log" 2>&1
    ) &
    echo $! > "$state/replica-$i.pid"
}

# --- commands -------------------------------------------------------------------------------

cmd_start() {
    local binary="" demo=0
    while [ $# -gt 0 ]; do
        case "$1" in
            --demo) demo=1 ;;
            -h | --help) usage ;;
            -*) die "unknown option $1" ;;
            *) [ -z "$binary" ] || die "one binary only"; binary="$1" ;;
        esac
        shift
    done
    binary="${binary:-${CARGO_TARGET_DIR:-$repo/target}/release/linkbridge}"
    [ -x "$binary" ] || die "no executable linkbridge binary at $binary (cargo build --release, or name one)"
    binary="$(cd "$(dirname "$binary")" && pwd)/$(basename "$binary")"
    [ "${#replica_ports[@]}" = 2 ] || die "TOPOLOGY_REPLICA_PORTS must name two ports"

    for name in lb replica-1 replica-2; do
        if [ -f "$state/$name.pid" ] && kill -0 "$(cat "$state/$name.pid")" 2>/dev/null; then
            die "already running (state in $state): run '$0 stop' first"
        fi
    done
    for port in "$lb_port" "${replica_ports[@]}" "$stats_port"; do
        port_in_use "$port" && die "port $port on 127.0.0.1 is in use"
    done
    ensure_haproxy
    command -v psql >/dev/null || die "psql is needed (Debian: postgresql-client)"
    command -v curl >/dev/null || die "curl is needed"

    remove_state
    mkdir -p "$state"
    chmod 700 "$state"
    echo "$binary" > "$state/binary"

    # A fresh database. WITH (FORCE) (PostgreSQL 13+) ends sessions a crashed run left.
    psql_admin -c 'SELECT 1' >/dev/null || die "cannot reach PostgreSQL at ${postgres}/postgres"
    say "fresh database $database on $postgres"
    psql_admin -c "DROP DATABASE IF EXISTS \"$database\" WITH (FORCE)"
    psql_admin -c "CREATE DATABASE \"$database\""

    # Shared signing keys: one key made once, before any replica starts (a replica that finds
    # no key makes its own, and then the other replica would refuse its tokens). Each replica's
    # data directory links signing-keys/ to the shared one, as a secret volume would be mounted.
    "$binary" --data-dir "$state/shared" keys rotate >/dev/null
    say "signing key $(basename "$(ls "$state/shared/signing-keys/"*.pem)" .pem) in $state/shared/signing-keys"

    local i
    for i in 1 2; do
        mkdir -p "$state/replica-$i"
        chmod 700 "$state/replica-$i"
        ln -s ../shared/signing-keys "$state/replica-$i/signing-keys"
        start_replica "$i" "$binary"
    done
    for i in 1 2; do
        wait_for "replica $i" "http://127.0.0.1:${replica_ports[$((i - 1))]}/readyz" "replica-$i" \
            || { cmd_stop; exit 1; }
        say "replica $i ready on 127.0.0.1:${replica_ports[$((i - 1))]} (pid $(cat "$state/replica-$i.pid"))"
    done

    # The load balancer: the compose file's configuration, its addresses from the environment.
    cat > "$state/lb.env" <<EOF
LB_BIND=127.0.0.1:${lb_port}
LB_STATS_BIND=127.0.0.1:${stats_port}
LB_REPLICA_1=127.0.0.1:${replica_ports[0]}
LB_REPLICA_2=127.0.0.1:${replica_ports[1]}
EOF
    (
        set -a
        # shellcheck disable=SC1091
        . "$state/lb.env"
        haproxy -c -q -f "$here/haproxy/haproxy.cfg"
    ) || { say "HAProxy refuses $here/haproxy/haproxy.cfg"; cmd_stop; exit 1; }
    (
        set -a
        # shellcheck disable=SC1091
        . "$state/lb.env"
        exec nohup haproxy -W -db -f "$here/haproxy/haproxy.cfg" </dev/null >"$state/lb.log" 2>&1
    ) &
    echo $! > "$state/lb.pid"
    wait_for "the load balancer" "$lb_url/readyz" lb || { cmd_stop; exit 1; }
    # Both replicas pass HAProxy's own checks before we say so.
    local deadline=$((SECONDS + health_timeout))
    until [ "$(lb_servers | grep -c ' UP$')" = 2 ]; do
        [ "$SECONDS" -lt "$deadline" ] || { say "HAProxy does not see both replicas UP:"; lb_servers >&2; cmd_stop; exit 1; }
        sleep 0.5
    done

    cat > "$state/topology.env" <<EOF
LB_URL=$lb_url
DATABASE_URL=$database_url
BINARY=$binary
DATA_DIR=$state/shared
REPLICA_1_URL=http://127.0.0.1:${replica_ports[0]}
REPLICA_2_URL=http://127.0.0.1:${replica_ports[1]}
REPLICA_1_PID=$(cat "$state/replica-1.pid")
REPLICA_2_PID=$(cat "$state/replica-2.pid")
LB_PID=$(cat "$state/lb.pid")
STATS_URL=http://127.0.0.1:${stats_port}/stats
EOF

    if [ "$demo" = 1 ]; then
        "$binary" --data-dir "$state/shared" --database-url "$database_url" demo setup >/dev/null
        say "demo clients demo-gp and demo-clw registered (keys in $state/shared/demo-clients)"
    fi

    cat <<EOF
linkbridge topology is up (state in $state, also as $state/topology.env)
  load balancer  $lb_url   (pid $(cat "$state/lb.pid"); statistics http://127.0.0.1:${stats_port}/stats)
  replica 1      http://127.0.0.1:${replica_ports[0]}   (pid $(cat "$state/replica-1.pid"), log $state/replica-1.log)
  replica 2      http://127.0.0.1:${replica_ports[1]}   (pid $(cat "$state/replica-2.pid"), log $state/replica-2.log)
  database       $database_url
Try it:
  $binary --data-dir $state/shared --database-url $database_url demo setup
  GP=\$($binary --data-dir $state/shared demo token demo-gp --server $lb_url)
  curl -s $lb_url/Patient -H "Authorization: Bearer \$GP"
Stop it: $0 stop
EOF
}

cmd_stop() {
    local clean=0
    [ "${1:-}" = "--clean" ] && clean=1
    [ -d "$state" ] || { say "nothing started (no $state)"; return 0; }
    local binary=linkbridge
    [ -f "$state/binary" ] && binary="$(cat "$state/binary")"
    # The load balancer first, so no request goes to a replica that is stopping.
    stop_one lb haproxy
    stop_one replica-1 "$binary"
    stop_one replica-2 "$binary"
    if [ "$clean" = 1 ]; then
        psql_admin -c "DROP DATABASE IF EXISTS \"$database\" WITH (FORCE)" && say "dropped database $database"
        remove_state && say "removed $state"
    fi
}

# Stops replica N if it runs (SIGTERM: it drains) and starts it again, e.g. after a crash
# test or to load a rotated signing key. The LB takes it back after two good checks.
cmd_restart() {
    local i="${1:-}"
    [[ "$i" =~ ^[12]$ ]] || die "restart needs a replica number, 1 or 2"
    [ -f "$state/binary" ] || die "nothing started (no $state/binary)"
    local binary
    binary="$(cat "$state/binary")"
    stop_one "replica-$i" "$binary"
    start_replica "$i" "$binary"
    wait_for "replica $i" "http://127.0.0.1:${replica_ports[$((i - 1))]}/readyz" "replica-$i" || exit 1
    local deadline=$((SECONDS + health_timeout))
    until lb_servers | grep -x "linkbridge-$i UP" >/dev/null; do
        [ "$SECONDS" -lt "$deadline" ] || die "HAProxy does not see replica $i UP"
        sleep 0.5
    done
    say "replica $i restarted (pid $(cat "$state/replica-$i.pid")) and back in the load balancer"
}

cmd_status() {
    [ -d "$state" ] || { say "nothing started (no $state)"; return 1; }
    local binary=linkbridge rc=0
    [ -f "$state/binary" ] && binary="$(cat "$state/binary")"
    for name in replica-1 replica-2 lb; do
        local expect="$binary"
        [ "$name" = lb ] && expect=haproxy
        if pid="$(live_pid "$name" "$expect")"; then
            echo "$name running (pid $pid)"
        else
            echo "$name not running"
            rc=1
        fi
    done
    echo "load balancer's view (HAProxy checks of /readyz):"
    lb_servers | sed 's/^/  /'
    return "$rc"
}

case "${1:-start}" in
    start) shift || true; cmd_start "$@" ;;
    stop) shift; cmd_stop "$@" ;;
    status) cmd_status ;;
    restart) shift; cmd_restart "$@" ;;
    -h | --help | help) usage ;;
    -*) cmd_start "$@" ;;
    *) if [ -x "$1" ]; then cmd_start "$@"; else usage 2; fi ;;
esac
