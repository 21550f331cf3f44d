#!/usr/bin/env bash
# Builds the base image of function containers, roost/base:bookworm (Debian bookworm with
# Python 3, Starlette and python-multipart for the function runtime, pip and venv for a
# function's extra_dependencies), without any registry: debootstrap + docker import. It is
# the same root file system as the offline platform images (roost/platform-base:bookworm),
# tagged twice, so one debootstrap serves both. Idempotent: an image whose label
# roost.base.version is not $version (older, or built before the label) is built anew.
set -euo pipefail
cd "$(dirname "$0")/.."
log() { echo "build-base-image: $*" >&2; }
# Raise it whenever the package list below changes.
version=2
packages=python3,python3-starlette,python3-multipart,python3-pip,python3-venv,redis-server,nginx-light,libnginx-mod-http-lua,lua-nginx-redis,lua-cjson,ca-certificates
image_version() { docker image inspect -f '{{ index .Config.Labels "roost.base.version" }}' "$1" 2>/dev/null || true; }
if [ "$(image_version roost/base:bookworm)" = "$version" ]; then
  log "roost/base:bookworm present (version $version)"
  exit 0
fi
if [ "$(image_version roost/platform-base:bookworm)" != "$version" ]; then
  command -v debootstrap >/dev/null || { log "installing debootstrap"; apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null; }
  root=$(mktemp -d)
  trap 'rm -rf "$root"' EXIT
  log "debootstrap bookworm into $root (a minute or two), base version $version"
  debootstrap --variant=minbase --include="$packages" bookworm "$root" http://deb.debian.org/debian >/dev/null
  rm -rf "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/var/cache/apt/*
  tar -C "$root" -c . | docker import -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    -c "LABEL roost.base.version=$version" - roost/platform-base:bookworm >/dev/null
fi
docker tag roost/platform-base:bookworm roost/base:bookworm
log "built roost/base:bookworm (version $version)"
