#!/bin/sh
# Renders nginx.conf for this machine and runs the gate in the foreground.
#   ROOST_GATE_PORT (8080)  ROOST_GATE_PREFIX (/tmp/roost-gate)  ROOST_ENVOY_ADDR (127.0.0.1:10000)
#   ROOST_REDIS_HOST (127.0.0.1)  ROOST_REDIS_PORT (6379)  ROOST_GATE_MAX_BODY (10485760)
#   ROOST_GATE_MAX_HELD (1000)  ROOST_GATE_WAKE_TIMEOUT_MS (30000)  ROOST_GATE_LOG_LEVEL (warn)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
: "${ROOST_GATE_PORT:=8080}"
: "${ROOST_GATE_PREFIX:=/tmp/roost-gate}"
: "${ROOST_ENVOY_ADDR:=127.0.0.1:10000}"
: "${ROOST_REDIS_HOST:=127.0.0.1}"
: "${ROOST_REDIS_PORT:=6379}"
: "${ROOST_GATE_MAX_BODY:=10485760}"
: "${ROOST_GATE_LOG_LEVEL:=warn}"
export ROOST_REDIS_HOST ROOST_REDIS_PORT
mkdir -p "$ROOST_GATE_PREFIX/tmp" "$ROOST_GATE_PREFIX/logs"
if command -v openresty >/dev/null 2>&1; then
  bin=openresty; modules=""
else
  bin=nginx
  modules="load_module /usr/lib/nginx/modules/ndk_http_module.so; load_module /usr/lib/nginx/modules/ngx_http_lua_module.so;"
fi
# Host names (compose) need a resolver; use the system's first nameserver.
resolver=$(awk '/^nameserver/ {print $2; exit}' /etc/resolv.conf 2>/dev/null || true)
[ -n "$resolver" ] || resolver=127.0.0.11
sed -e "s|@LOAD_MODULES@|$modules|" \
    -e "s|@PREFIX@|$ROOST_GATE_PREFIX|g" \
    -e "s|@LUA_DIR@|$here/lua|g" \
    -e "s|@PORT@|$ROOST_GATE_PORT|g" \
    -e "s|@ENVOY_ADDR@|$ROOST_ENVOY_ADDR|g" \
    -e "s|@MAX_BODY@|$ROOST_GATE_MAX_BODY|g" \
    -e "s|@RESOLVER@|$resolver|g" \
    -e "s|@LOG_LEVEL@|$ROOST_GATE_LOG_LEVEL|g" \
    "$here/nginx.conf.in" > "$ROOST_GATE_PREFIX/nginx.conf"
exec "$bin" -p "$ROOST_GATE_PREFIX" -c "$ROOST_GATE_PREFIX/nginx.conf"
