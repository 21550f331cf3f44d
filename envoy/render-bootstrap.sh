#!/bin/sh
# Renders envoy/bootstrap.yaml with ROOST_* variables (defaults below) to stdout.
# Usage: ROOST_XDS_ADDRESS=control-plane envoy/render-bootstrap.sh > /tmp/envoy.yaml
set -eu
here=$(dirname "$0")
: "${ROOST_NODE_ID:=roost-envoy}"
: "${ROOST_ENVOY_ADMIN_ADDRESS:=127.0.0.1}"
: "${ROOST_ENVOY_ADMIN_PORT:=9901}"
: "${ROOST_XDS_API_TYPE:=DELTA_GRPC}"
: "${ROOST_XDS_ADDRESS:=127.0.0.1}"
: "${ROOST_XDS_PORT:=18000}"
: "${ROOST_STATS_FLUSH_INTERVAL:=0.25s}"
: "${ROOST_STATSD_ADDRESS:=127.0.0.1}"
: "${ROOST_STATSD_PORT:=8125}"
sed -e "s|\${ROOST_NODE_ID}|$ROOST_NODE_ID|g" \
    -e "s|\${ROOST_ENVOY_ADMIN_ADDRESS}|$ROOST_ENVOY_ADMIN_ADDRESS|g" \
    -e "s|\${ROOST_ENVOY_ADMIN_PORT}|$ROOST_ENVOY_ADMIN_PORT|g" \
    -e "s|\${ROOST_XDS_API_TYPE}|$ROOST_XDS_API_TYPE|g" \
    -e "s|\${ROOST_XDS_ADDRESS}|$ROOST_XDS_ADDRESS|g" \
    -e "s|\${ROOST_XDS_PORT}|$ROOST_XDS_PORT|g" \
    -e "s|\${ROOST_STATS_FLUSH_INTERVAL}|$ROOST_STATS_FLUSH_INTERVAL|g" \
    -e "s|\${ROOST_STATSD_ADDRESS}|$ROOST_STATSD_ADDRESS|g" \
    -e "s|\${ROOST_STATSD_PORT}|$ROOST_STATSD_PORT|g" \
    "$here/bootstrap.yaml"
