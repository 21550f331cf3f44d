#!/usr/bin/env bash
# Builds the base image of function containers, roost/base:bookworm (Debian bookworm with
# Python 3), without any registry: debootstrap + docker import. It is the same root file
# system as the offline platform images (roost/platform-base:bookworm), tagged twice, so
# one debootstrap serves both. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
log() { echo "build-base-image: $*" >&2; }
if docker image inspect roost/base:bookworm >/dev/null 2>&1; then
  log "roost/base:bookworm present"
  exit 0
fi
if ! docker image inspect roost/platform-base:bookworm >/dev/null 2>&1; then
  command -v debootstrap >/dev/null || { log "installing debootstrap"; apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null; }
  root=$(mktemp -d)
  trap 'rm -rf "$root"' EXIT
  log "debootstrap bookworm into $root (about a minute)"
  debootstrap --variant=minbase \
    --include=python3,redis-server,nginx-light,libnginx-mod-http-lua,lua-nginx-redis,lua-cjson,ca-certificates \
    bookworm "$root" http://deb.debian.org/debian >/dev/null
  rm -rf "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/var/cache/apt/*
  tar -C "$root" -c . | docker import -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' - roost/platform-base:bookworm >/dev/null
fi
docker tag roost/platform-base:bookworm roost/base:bookworm
log "built roost/base:bookworm"
