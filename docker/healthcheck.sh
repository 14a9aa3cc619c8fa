#!/bin/bash
# Container health probe without curl: one HTTP/1.0 GET over bash's /dev/tcp to the port the
# server listens on (LINKBRIDGE_LISTEN), succeeding only on a 200 status line.
#
#   linkbridge-healthcheck            GET /healthz (the process is alive)
#   linkbridge-healthcheck /readyz    GET /readyz  (and its database is reachable)
#
# Installed in the image as /usr/local/bin/linkbridge-healthcheck; the Dockerfile's
# HEALTHCHECK runs it. The caller's timeout (Docker's --timeout) bounds it; `read -t` too.
set -euo pipefail

path="${1:-/healthz}"
listen="${LINKBRIDGE_LISTEN:-0.0.0.0:8080}"
port="${listen##*:}"
case "$listen" in
    0.0.0.0:*) host=127.0.0.1 ;;                        # every IPv4 address: use loopback
    "[::]:"*) host=::1 ;;                               # every IPv6 address: likewise
    "["*) host="${listen%]:*}"; host="${host#\[}" ;;    # one IPv6 address
    *) host="${listen%:*}" ;;                           # one IPv4 address or a host name
esac

exec 3<>"/dev/tcp/${host}/${port}"
printf 'GET %s HTTP/1.0\r\nHost: localhost\r\nConnection: close\r\n\r\n' "$path" >&3
IFS=' ' read -r -t 5 _version status _rest <&3
exec 3<&-
[ "$status" = 200 ]
