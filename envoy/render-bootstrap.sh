#!/bin/sh
# Renders envoy/bootstrap.yaml with ROOST_* variables (defaults below) to stdout.
# Usage: ROOST_XDS_ADDR=control-plane:18000 envoy/render-bootstrap.sh > /tmp/envoy.yaml
#   ROOST_NODE_ID               Envoy's node id                      [roost-envoy]
#   ROOST_ENVOY_ADMIN_BIND      Envoy's admin API, ip:port           [127.0.0.1:9901]
#   ROOST_XDS_ADDR              the control plane's ADS, host:port   [127.0.0.1:18000]
#   ROOST_XDS_API_TYPE          DELTA_GRPC or GRPC                   [DELTA_GRPC]
#   ROOST_STATS_FLUSH_INTERVAL  stats flush interval                 [0.25s]
#   ROOST_STATSD_ADDR           the statsd-listener, host:port       [127.0.0.1:8125]
#   ROOST_CONTROL_TOKEN_FILE    a file holding the control token: adds the guarded admin
#                               listener (GET /clusters with the token only)  [none]
#   ROOST_ENVOY_ADMIN_GUARD_BIND  that listener, ip:port             [0.0.0.0:9902]
# The old pairs ROOST_ENVOY_ADMIN_ADDRESS/_PORT, ROOST_XDS_ADDRESS/_PORT and
# ROOST_STATSD_ADDRESS/_PORT are still read (with a warning) when the new name is unset;
# they are also the template's slots (bootstrap.yaml wants address and port apart).
set -eu
here=$(dirname "$0")
die() {
  echo "render-bootstrap: $*" >&2
  exit 1
}
# host:port (an IPv6 address in brackets) -> the address slot $2 and the port slot $3
split() {
  case "$1" in
    \[*\]:[0-9]*) host=${1%:*} host=${host#\[} host=${host%\]} ;;
    *:[0-9]*) host=${1%:*} ;;
    *) die "$4 must be host:port, got '$1'" ;;
  esac
  port=${1##*:}
  eval "$2=\$host $3=\$port"
}
# new name, its value, address slot, port slot
from() {
  if [ -n "$2" ]; then
    split "$2" "$3" "$4" "$1"
  else
    for old in "$3" "$4"; do
      eval "set_old=\${$old:-}"
      [ -z "$set_old" ] || echo "render-bootstrap: $old is deprecated and still read; set $1 instead" >&2
    done
  fi
}
from ROOST_ENVOY_ADMIN_BIND "${ROOST_ENVOY_ADMIN_BIND:-}" ROOST_ENVOY_ADMIN_ADDRESS ROOST_ENVOY_ADMIN_PORT
from ROOST_XDS_ADDR "${ROOST_XDS_ADDR:-}" ROOST_XDS_ADDRESS ROOST_XDS_PORT
from ROOST_STATSD_ADDR "${ROOST_STATSD_ADDR:-}" ROOST_STATSD_ADDRESS ROOST_STATSD_PORT
: "${ROOST_NODE_ID:=roost-envoy}"
: "${ROOST_ENVOY_ADMIN_ADDRESS:=127.0.0.1}"
: "${ROOST_ENVOY_ADMIN_PORT:=9901}"
: "${ROOST_XDS_API_TYPE:=DELTA_GRPC}"
: "${ROOST_XDS_ADDRESS:=127.0.0.1}"
: "${ROOST_XDS_PORT:=18000}"
: "${ROOST_STATS_FLUSH_INTERVAL:=0.25s}"
: "${ROOST_STATSD_ADDRESS:=127.0.0.1}"
: "${ROOST_STATSD_PORT:=8125}"
# The guarded admin listener (bootstrap.yaml's `#guard ` lines): kept with the token in
# it when a token file is given, dropped otherwise.
GUARD_ADDRESS= GUARD_PORT= token=
guard='/^#guard /d'
if [ -n "${ROOST_CONTROL_TOKEN_FILE:-}" ]; then
  token=$(tr -d ' \t\r\n' < "$ROOST_CONTROL_TOKEN_FILE") || die "cannot read ROOST_CONTROL_TOKEN_FILE=$ROOST_CONTROL_TOKEN_FILE"
  case "$token" in
    "" | *[!A-Za-z0-9._~+/=-]*) die "the control token in $ROOST_CONTROL_TOKEN_FILE must be letters, digits and . _ ~ + / = - only" ;;
  esac
  split "${ROOST_ENVOY_ADMIN_GUARD_BIND:-0.0.0.0:9902}" GUARD_ADDRESS GUARD_PORT ROOST_ENVOY_ADMIN_GUARD_BIND
  guard='s/^#guard //'
fi
sed -e "$guard" \
    -e "s|@GUARD_ADDRESS@|$GUARD_ADDRESS|g" \
    -e "s|@GUARD_PORT@|$GUARD_PORT|g" \
    -e "s|@CONTROL_TOKEN@|$token|g" \
    -e "s|\${ROOST_NODE_ID}|$ROOST_NODE_ID|g" \
    -e "s|\${ROOST_ENVOY_ADMIN_ADDRESS}|$ROOST_ENVOY_ADMIN_ADDRESS|g" \
    -e "s|\${ROOST_ENVOY_ADMIN_PORT}|$ROOST_ENVOY_ADMIN_PORT|g" \
    -e "s|\${ROOST_XDS_API_TYPE}|$ROOST_XDS_API_TYPE|g" \
    -e "s|\${ROOST_XDS_ADDRESS}|$ROOST_XDS_ADDRESS|g" \
    -e "s|\${ROOST_XDS_PORT}|$ROOST_XDS_PORT|g" \
    -e "s|\${ROOST_STATS_FLUSH_INTERVAL}|$ROOST_STATS_FLUSH_INTERVAL|g" \
    -e "s|\${ROOST_STATSD_ADDRESS}|$ROOST_STATSD_ADDRESS|g" \
    -e "s|\${ROOST_STATSD_PORT}|$ROOST_STATSD_PORT|g" \
    "$here/bootstrap.yaml"
