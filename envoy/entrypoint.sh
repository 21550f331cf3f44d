#!/bin/sh
# Envoy's container entry point (compose): renders the bootstrap (the statsd-listener by
# its name, looked up again by Envoy while it runs), then runs Envoy.
# On SIGTERM (docker stop, compose restart) it drains Envoy before stopping it: its admin
# API's POST /drain_listeners (the listeners stop accepting at once: a new connection is
# refused, and the gate holds its request until an Envoy is back; connections already
# open finish, their answers carrying Connection: close), then it waits, at most
# ROOST_ENVOY_DRAIN_WAIT_S, until Envoy has had no request in flight to a function for
# two readings 0.2 s apart, and only then sends Envoy SIGTERM (on which Envoy exits at
# once, cutting what is in flight). A graceful drain (?graceful) would keep accepting for
# ROOST_ENVOY_DRAIN_TIME_S, and a request accepted after the last reading was cut.
#   ROOST_ENVOY_DRAIN_TIME_S  Envoy's --drain-time-s                        [5]
#   ROOST_ENVOY_DRAIN_WAIT_S  longest wait for requests in flight on stop   [10]
#   ROOST_ENVOY_CONFIG        where the rendered bootstrap goes              [/tmp/envoy.yaml]
# The admin calls go through bash's /dev/tcp (the images have bash; curl is not in them).
set -eu
here=$(dirname "$0")
# compose's statsd-listener, unless told otherwise (the old ROOST_STATSD_ADDRESS too)
[ -n "${ROOST_STATSD_ADDR:-}${ROOST_STATSD_ADDRESS:-}" ] || export ROOST_STATSD_ADDR=statsd-listener:8125
config=${ROOST_ENVOY_CONFIG:-/tmp/envoy.yaml}
# The rendered bootstrap may hold the control token (the guarded admin listener): its
# owner's only.
(umask 077 && "$here/render-bootstrap.sh" > "$config")

admin_bind=${ROOST_ENVOY_ADMIN_BIND:-${ROOST_ENVOY_ADMIN_ADDRESS:-127.0.0.1}:${ROOST_ENVOY_ADMIN_PORT:-9901}}
admin_host=${admin_bind%:*}
case "$admin_host" in 0.0.0.0 | "[::]" | "") admin_host=127.0.0.1 ;; esac
admin_host=${admin_host#\[} admin_host=${admin_host%\]}
admin_port=${admin_bind##*:}
# METHOD PATH: Envoy's answer (head and body) on stdout.
admin() {
  timeout 2 bash -c 'exec 3<>"/dev/tcp/$0/$1" || exit 1
    printf "%s %s HTTP/1.1\r\nHost: envoy\r\nContent-Length: 0\r\nConnection: close\r\n\r\n" "$2" "$3" >&3
    cat <&3' "$admin_host" "$admin_port" "$1" "$2"
}
# Requests Envoy has in flight to the functions (active and queued, per function cluster).
in_flight() {
  admin GET '/stats?filter=^cluster\.fn-.*\.upstream_rq_(active|pending_active)$' \
    | tr -d '\r' | awk -F': ' '/^cluster\.fn-/ { n += $2 } END { print n + 0 }'
}
stop() {
  trap '' TERM INT
  echo "entrypoint: draining Envoy" >&2
  if admin POST /drain_listeners | head -n1 | grep -q ' 200 '; then
    wait_s=${ROOST_ENVOY_DRAIN_WAIT_S:-10}
    i=0 quiet=0
    while [ "$i" -lt $((wait_s * 10)) ]; do
      n=$(in_flight) || n=?
      if [ "$n" = 0 ]; then
        quiet=$((quiet + 1))
        [ "$quiet" -ge 2 ] && break
      else
        quiet=0
      fi
      sleep 0.2
      i=$((i + 2))
    done
    echo "entrypoint: ${n:-?} requests in flight after $((i / 10)).$((i % 10)) s; stopping Envoy" >&2
  else
    echo "entrypoint: Envoy's admin API refused to drain; stopping Envoy" >&2
  fi
  kill -TERM "$envoy" 2>/dev/null || true
  status=0
  wait "$envoy" || status=$?
  exit "$status"
}
envoy -c "$config" --disable-hot-restart \
  --drain-time-s "${ROOST_ENVOY_DRAIN_TIME_S:-5}" --drain-strategy immediate "$@" &
envoy=$!
trap stop TERM INT
status=0
wait "$envoy" || status=$?
exit "$status"
