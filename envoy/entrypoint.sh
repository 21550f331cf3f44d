#!/bin/sh
# Envoy's container entry point (compose): Envoy's statsd sink needs an IP address, so
# resolve the statsd-listener's name first, render the bootstrap, then run Envoy.
set -eu
here=$(dirname "$0")
resolve() {
  # getent is in every glibc image; retry while the other container starts.
  for _ in $(seq 1 100); do
    ip=$(getent hosts "$1" | awk '{print $1; exit}')
    [ -n "$ip" ] && { echo "$ip"; return 0; }
    sleep 0.1
  done
  echo "entrypoint: cannot resolve $1" >&2
  return 1
}
if [ -n "${ROOST_STATSD_ADDR:-}" ] || [ -z "${ROOST_STATSD_ADDRESS:-}" ]; then
  : "${ROOST_STATSD_ADDR:=statsd-listener:8125}"
  host=${ROOST_STATSD_ADDR%:*}
  case "$host" in
    *[!0-9.]*) ROOST_STATSD_ADDR=$(resolve "$host"):${ROOST_STATSD_ADDR##*:} ;;
  esac
  export ROOST_STATSD_ADDR
else # the deprecated ROOST_STATSD_ADDRESS (render-bootstrap.sh warns)
  case "$ROOST_STATSD_ADDRESS" in
    *[!0-9.]*) ROOST_STATSD_ADDRESS=$(resolve "$ROOST_STATSD_ADDRESS") ;;
  esac
  export ROOST_STATSD_ADDRESS
fi
"$here/render-bootstrap.sh" > /tmp/envoy.yaml
exec envoy -c /tmp/envoy.yaml --disable-hot-restart "$@"
