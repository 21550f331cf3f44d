#!/usr/bin/env bash
# Runs Roost as a Docker Swarm stack (swarm/roost-stack.yml, stack name `roost`) on this
# engine, which must be a swarm manager. This script never creates, joins or leaves a
# swarm: `docker swarm init` (or join as a manager) is yours (docs/swarm.md).
#
#   scripts/swarm.sh up [--no-ipvs] [function]
#                                    build the images offline, create the secrets when
#                                    missing, deploy the stack by image ID, then wait
#                                    (120 s at most) until a call of the function (default:
#                                    the first declared one) answers on the public port.
#                                    The public port is Swarm's routing mesh where this
#                                    kernel has IPVS (swarm/mesh.yml), else the entry relay,
#                                    a container on this node (swarm/entry.yaml);
#                                    --no-ipvs (or ROOST_SWARM_ENTRY=relay) chooses the relay
#   scripts/swarm.sh down [--volumes]
#                                    remove the stack (and the entry relay), wait until its
#                                    services, tasks, containers (function replicas
#                                    included) and networks are gone, then remove the
#                                    secrets; the data volumes are kept unless --volumes
#
# Environment (defaults in brackets), passed on to the stack file:
#   ROOST_PORT            the public port (every node with the mesh; this one with the relay) [8080]
#   ROOST_SWARM_ENTRY     mesh or relay                  [mesh where /proc/sys/net/ipv4/vs is]
#   ROOST_SWARM_RUNTIME   the orchestrator's runtime: swarm or docker                     [swarm]
#   ROOST_DOCKER_NETWORK  the functions overlay's name                      [roost-functions]
#   ROOST_HOME            the repository on this manager (the definitions)  [this one]
#   ROOST_API_TOKEN, ROOST_SPARE_MEMORY, ROOST_GATE_MAX_BODY, ROOST_ASYNC_CALLBACK_HOSTS,
#   ROOST_ASYNC_KEEP_S, RUST_LOG as in compose.yaml (docs/swarm.md). CARGO_TARGET_DIR
#   is honoured by the build.
set -euo pipefail
cd "$(dirname "$0")/.."
here=$(pwd)

stack=roost
secrets=(roost-redis-password roost-control-token roost-redis-conf)
network=${ROOST_DOCKER_NETWORK:-roost-functions}
port=${ROOST_PORT:-8080}
up_timeout_s=120
down_timeout_s=120

log() { echo "swarm: $*" >&2; }
die() {
  echo "swarm: error: $*" >&2
  exit 1
}

usage() {
  sed -n '2,29p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

need_manager() {
  command -v docker >/dev/null || die "docker is not installed (the Docker CLI and engine are needed)"
  local state
  state=$(docker info --format '{{.Swarm.LocalNodeState}} {{.Swarm.ControlAvailable}}' 2>&1) ||
    die "cannot reach the Docker engine ($state): start it, or set DOCKER_HOST"
  case "$state" in
    "active true") ;;
    "active false") die "this engine is a swarm worker, not a manager: run this script on a manager (docker node ls there), or promote this node (docker node promote <node>)" ;;
    *) die "this engine is not in a swarm (state: ${state%% *}): run docker swarm init --advertise-addr <this node's address> first (docs/swarm.md), then run this again" ;;
  esac
}

# The stack's services that do not run as many tasks as they want, as "name current/desired".
not_running() {
  docker stack services "$stack" --format '{{.Name}} {{.Replicas}}' 2>/dev/null | awk '{ split($2, r, "/"); if (r[1] != r[2]) print $1 " " $2 }'
}

# The first function declared in the definitions file (its URL name).
first_function() {
  awk '/^usable-functions:/ { f = 1; next }
       f && /^[^ #]/ { exit }
       f && /^  [A-Za-z0-9_-]+:/ { key = $1; sub(/:$/, "", key); name = key; inside = 1; next }
       inside && /^    name:/ { gsub(/["'"'"']/, "", $2); name = $2; print name; exit }
       inside && /^  [A-Za-z0-9_-]+:/ { print name; exit }
       END { if (inside && name != "") print name }' "$here/faas-runtime/global-function-definition.yml" | head -n1
}

image_id() { # tag: its sha256 ID
  docker image inspect -f '{{.Id}}' "$1" 2>/dev/null || die "image $1 is missing after the build: run scripts/build-offline-images.sh to see why"
}

build_images() {
  log "building the offline images (scripts/build-offline-images.sh: Debian base, release binaries, Envoy, Redis, the gate)"
  local exports
  exports=$(scripts/build-offline-images.sh) || die "scripts/build-offline-images.sh failed (its messages are above); run scripts/install-deps.sh first if Envoy or Debian's packages are missing"
  eval "$exports"
  # Envoy and the gate with their configuration baked in (no bind mounts on a swarm).
  local ctx
  ctx=$(mktemp -d)
  cp -R envoy gateway-lua "$ctx/"
  log "building roost/envoy-stack:offline (Envoy + envoy/) and roost/gate-stack:offline (the gate + gateway-lua/)"
  docker build -q -t roost/envoy-stack:offline --build-arg "BASE=$ROOST_ENVOY_IMAGE" -f docker/offline/envoy-stack.Dockerfile "$ctx" >/dev/null ||
    { rm -rf "$ctx"; die "building roost/envoy-stack:offline failed (above)"; }
  docker build -q -t roost/gate-stack:offline --build-arg "BASE=$ROOST_GATE_IMAGE" -f docker/offline/gate-stack.Dockerfile "$ctx" >/dev/null ||
    { rm -rf "$ctx"; die "building roost/gate-stack:offline failed (above)"; }
  rm -rf "$ctx"
  # Every image by ID: with a tag the Swarm agent tries a registry pull at every task start.
  ROOST_REDIS_IMAGE=$(image_id "$ROOST_REDIS_IMAGE")
  ROOST_CONTROL_PLANE_IMAGE=$(image_id "$ROOST_CONTROL_PLANE_IMAGE")
  ROOST_ORCHESTRATOR_IMAGE=$(image_id "$ROOST_ORCHESTRATOR_IMAGE")
  ROOST_STATSD_LISTENER_IMAGE=$(image_id "$ROOST_STATSD_LISTENER_IMAGE")
  ROOST_ASYNC_WORKER_IMAGE=$(image_id "$ROOST_ASYNC_WORKER_IMAGE")
  ROOST_ENVOY_IMAGE=$(image_id roost/envoy-stack:offline)
  ROOST_GATE_IMAGE=$(image_id roost/gate-stack:offline)
  ROOST_BASE_IMAGE=$(image_id roost/base:bookworm)
  export ROOST_REDIS_IMAGE ROOST_CONTROL_PLANE_IMAGE ROOST_ORCHESTRATOR_IMAGE ROOST_STATSD_LISTENER_IMAGE \
    ROOST_ASYNC_WORKER_IMAGE ROOST_ENVOY_IMAGE ROOST_GATE_IMAGE ROOST_BASE_IMAGE
  local v
  for v in ROOST_REDIS_IMAGE ROOST_CONTROL_PLANE_IMAGE ROOST_ORCHESTRATOR_IMAGE ROOST_STATSD_LISTENER_IMAGE \
    ROOST_ASYNC_WORKER_IMAGE ROOST_ENVOY_IMAGE ROOST_GATE_IMAGE ROOST_BASE_IMAGE; do
    log "  $v=${!v}"
  done
}

make_secrets() {
  local have=() missing=() s
  for s in "${secrets[@]}"; do
    if docker secret inspect "$s" >/dev/null 2>&1; then have+=("$s"); else missing+=("$s"); fi
  done
  if [ ${#missing[@]} -eq 0 ]; then
    log "secrets present, kept: ${have[*]}"
    return
  fi
  [ ${#have[@]} -eq 0 ] ||
    die "only some of the secrets exist (${have[*]}; missing: ${missing[*]}); they are made together (the password is in two of them): remove them with scripts/swarm.sh down (or docker secret rm ${have[*]}) and run up again"
  log "creating the secrets ${secrets[*]} (a random Redis password and control token, and redis.conf with the password)"
  local password token
  password=$(od -An -tx1 -N24 /dev/urandom | tr -d ' \n')
  token=$(od -An -tx1 -N24 /dev/urandom | tr -d ' \n')
  printf '%s' "$password" | docker secret create --label roost.stack="$stack" roost-redis-password - >/dev/null
  printf '%s' "$token" | docker secret create --label roost.stack="$stack" roost-control-token - >/dev/null
  printf 'requirepass %s\n' "$password" | docker secret create --label roost.stack="$stack" roost-redis-conf - >/dev/null
}

check_network() {
  local found
  found=$(docker network ls --filter "name=^${network}\$" --format '{{.Driver}} {{.Scope}} {{.Label "com.docker.stack.namespace"}}')
  [ -n "$found" ] || return 0
  case "$found" in
    "overlay swarm $stack") ;; # this stack's, from an earlier deploy
    *) die "a network named $network already exists ($found: compose's, or another stack's): stop what uses it and remove it (docker network rm $network), or choose another name with ROOST_DOCKER_NETWORK=<name>" ;;
  esac
}

# The entry relay (swarm/entry.yaml): on a kernel without IPVS, Envoy as a TCP relay in a
# plain container on this node, publishing the public port (plain port publishing needs
# no IPVS), on the stack's public network, to every Envoy task.
entry_container=${stack}_entry

start_entry() {
  docker rm -f "$entry_container" >/dev/null 2>&1 || true
  log "starting the entry relay $entry_container (swarm/entry.yaml): port $port on this node to the Envoy tasks"
  docker run -d --name "$entry_container" --label roost.entry="$stack" --restart unless-stopped \
    --network "${stack}_public" -p "$port:8080" --entrypoint envoy "$ROOST_ENVOY_IMAGE" \
    --config-yaml "$(cat swarm/entry.yaml)" --log-level warn >/dev/null ||
    die "cannot start the entry relay (above): is port $port free on this node? (ROOST_PORT)"
}

# One call of the function through the public port: prints the HTTP status, and the
# body into $2.
call() { # function, body file
  curl -s -o "$2" -w '%{http_code}' --max-time 10 "http://localhost:$port/$1" 2>/dev/null || echo "no answer"
}

# mesh (Swarm's routing mesh publishes the port: needs IPVS) or relay (swarm/entry.yaml).
entry=${ROOST_SWARM_ENTRY:-}

up() {
  need_manager
  if [ "${1:-}" = --no-ipvs ]; then
    entry=relay
    shift
  fi
  if [ -z "$entry" ]; then
    if [ -d /proc/sys/net/ipv4/vs ]; then entry=mesh; else
      entry=relay
      log "this kernel has no IPVS (/proc/sys/net/ipv4/vs is missing): Swarm's routing mesh cannot publish the port, so the entry relay does (swarm/entry.yaml)"
    fi
  fi
  case "$entry" in mesh | relay) ;; *) die "ROOST_SWARM_ENTRY=$entry: write mesh (Swarm's routing mesh, needs IPVS) or relay (a relay container on this node)" ;; esac
  local fn=${1:-}
  [ -n "$fn" ] || fn=$(first_function)
  [ -n "$fn" ] || die "no function declared in faas-runtime/global-function-definition.yml to call: name one (scripts/swarm.sh up <function>)"
  export ROOST_HOME=${ROOST_HOME:-$here}
  case "$ROOST_HOME" in /*) ;; *) die "ROOST_HOME=$ROOST_HOME must be an absolute path (the repository on this manager)" ;; esac
  [ -f "$ROOST_HOME/faas-runtime/global-function-definition.yml" ] ||
    die "ROOST_HOME=$ROOST_HOME has no faas-runtime/global-function-definition.yml: set it to the Roost repository on this manager"
  check_network
  build_images
  make_secrets
  local where="http://localhost:$port/$fn" files=(-c swarm/roost-stack.yml)
  [ "$entry" = relay ] || files+=(-c swarm/mesh.yml)
  log "deploying the stack $stack (${files[*]}; public port $port by the $entry, functions network $network)"
  docker stack deploy --resolve-image never --detach=true "${files[@]}" "$stack" >&2 ||
    die "docker stack deploy failed (above); fix what it names, or remove the stack with scripts/swarm.sh down and try again"
  [ "$entry" = mesh ] || start_entry
  log "waiting up to ${up_timeout_s} s until $where answers (the first call wakes it)"
  local start=$SECONDS next_report=$((SECONDS + 15)) code="no answer" body=/tmp/roost-swarm-up.$$
  while [ $((SECONDS - start)) -lt $up_timeout_s ]; do
    code=$(call "$fn" "$body")
    case "$code" in
      2??)
        log "up: $where answered $code after $((SECONDS - start)) s: $(head -c 200 "$body")"
        rm -f "$body"
        docker stack services "$stack" >&2
        log "management API: http://localhost:$port/system/... with the API token (docs/swarm.md)"
        return 0
        ;;
    esac
    if [ $SECONDS -ge $next_report ]; then
      local waiting
      waiting=$(not_running | tr '\n' ' ')
      log "still waiting ($((SECONDS - start)) s; last answer: $code; not all running yet: ${waiting:-none})"
      next_report=$((SECONDS + 15))
    fi
    sleep 1
  done
  local last
  last=$(head -c 300 "$body" 2>/dev/null || true)
  rm -f "$body"
  local waiting svc
  waiting=$(not_running)
  echo "swarm: error: $where did not answer within ${up_timeout_s} s (last: $code ${last})" >&2
  if [ "$entry" = mesh ] && [ ! -d /proc/sys/net/ipv4/vs ]; then
    echo "swarm: this kernel shows no IPVS (/proc/sys/net/ipv4/vs is missing): Swarm's routing mesh cannot publish port $port; run scripts/swarm.sh down, then scripts/swarm.sh up --no-ipvs" >&2
  fi
  if [ -n "$waiting" ]; then
    echo "swarm: services not running as many tasks as they want (name current/desired):" >&2
    while read -r svc counts; do
      echo "  $svc $counts; its latest tasks:" >&2
      docker service ps --no-trunc --format '    {{.Name}} {{.CurrentState}} {{.Error}}' "$svc" 2>/dev/null | head -n 3 >&2 || true
    done <<<"$waiting"
  else
    echo "swarm: every service runs; the function itself did not answer: see docker service logs ${stack}_orchestrator" >&2
  fi
  echo "swarm: see why with docker service logs ${stack}_<service>; remove everything with scripts/swarm.sh down" >&2
  exit 1
}

# Waits until `check` prints nothing, or `deadline` (seconds since the script started).
wait_gone() { # what, deadline, check...
  local what=$1 deadline=$2
  shift 2
  local left
  while :; do
    left=$("$@" 2>/dev/null || true)
    [ -z "$left" ] && return 0
    [ $SECONDS -lt "$deadline" ] || {
      log "still there after the wait: $what: $(echo "$left" | tr '\n' ' ')"
      return 1
    }
    sleep 1
  done
}

stack_services() { docker service ls -q --filter "label=com.docker.stack.namespace=$stack"; }
stack_containers() { docker ps -aq --filter "label=com.docker.stack.namespace=$stack"; }
function_containers() { docker ps -aq --filter "label=roost.network=$network"; }
stack_networks() { docker network ls -q --filter "label=com.docker.stack.namespace=$stack"; }

function_services() { docker service ls -q --filter "label=roost.network=$network"; }

down() {
  need_manager
  local volumes=0
  case "${1:-}" in
    --volumes) volumes=1 ;;
    "") ;;
    *) die "down takes --volumes or nothing, not $1" ;;
  esac
  local deadline=$((SECONDS + down_timeout_s)) ok=1
  if docker container inspect "$entry_container" >/dev/null 2>&1; then
    log "removing the entry relay $entry_container"
    docker rm -f "$entry_container" >/dev/null || ok=0
  fi
  if [ -n "$(stack_services)" ]; then
    log "removing the stack $stack (its services first; the orchestrator stops the function replicas, up to 40 s)"
    docker stack rm "$stack" >&2 || log "docker stack rm reported errors (above): networks still in use are removed below once free"
  else
    log "no service of the stack $stack is left"
  fi
  log "waiting until the stack's services, task containers and function replicas are gone (${down_timeout_s} s at most)"
  wait_gone "services" "$deadline" stack_services || ok=0
  wait_gone "task containers" "$deadline" stack_containers || ok=0
  wait_gone "function replica services on $network" "$deadline" function_services || {
    log "removing the function replica services left on $network: $(function_services | tr '\n' ' ')"
    function_services | xargs -r docker service rm >/dev/null || ok=0
  }
  wait_gone "function replicas on $network" "$deadline" function_containers || {
    log "removing the function replicas left on $network: $(function_containers | tr '\n' ' ')"
    function_containers | xargs -r docker rm -f >/dev/null || ok=0
  }
  local n
  for n in $(stack_networks); do
    log "removing the network $(docker network inspect -f '{{.Name}}' "$n" 2>/dev/null || echo "$n")"
    until docker network rm "$n" >/dev/null 2>&1 || ! docker network inspect "$n" >/dev/null 2>&1; do
      [ $SECONDS -lt $((deadline + 30)) ] || {
        log "cannot remove the network $n: something still uses it (docker network inspect $n)"
        ok=0
        break
      }
      sleep 1
    done
  done
  wait_gone "networks" $((deadline + 30)) stack_networks || ok=0
  local s
  for s in "${secrets[@]}"; do
    if docker secret inspect "$s" >/dev/null 2>&1; then
      log "removing the secret $s"
      docker secret rm "$s" >/dev/null || { log "cannot remove the secret $s (still used by a service?)"; ok=0; }
    fi
  done
  if [ "$volumes" = 1 ]; then
    for s in "${stack}_redis-data" "${stack}_roost-data"; do
      if docker volume inspect "$s" >/dev/null 2>&1; then
        log "removing the volume $s"
        until docker volume rm "$s" >/dev/null 2>&1; do
          [ $SECONDS -lt $((deadline + 30)) ] || { log "cannot remove the volume $s (docker volume inspect $s)"; ok=0; break; }
          sleep 1
        done
      fi
    done
  fi
  if [ "$ok" = 1 ]; then
    log "down: the stack $stack, its networks and secrets are gone; its data volumes ${stack}_redis-data and ${stack}_roost-data are kept unless --volumes (docker volume rm them to start afresh)"
  else
    die "down: some of the stack is left (above); run scripts/swarm.sh down again, or remove it with docker service/network/secret rm"
  fi
}

case "${1:-}" in
  up) shift && up "$@" ;;
  down) shift && down "$@" ;;
  *) usage ;;
esac
