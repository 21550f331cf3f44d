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
case "${ROOST_STATSD_ADDRESS:=statsd-listener}" in
  *[!0-9.]*) ROOST_STATSD_ADDRESS=$(resolve "$ROOST_STATSD_ADDRESS") ;;
esac
export ROOST_STATSD_ADDRESS
"$here/render-bootstrap.sh" > /tmp/envoy.yaml
exec envoy -c /tmp/envoy.yaml --disable-hot-restart "$@"
