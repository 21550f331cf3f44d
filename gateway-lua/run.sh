#!/bin/sh
# Runs Roost's gate: renders nginx.conf (next to this script) into a prefix folder for
# this machine and starts nginx (Debian's, with the Lua module) or OpenResty in the
# foreground, logging to stderr. Used by compose, `roost up` and the tests.
#
#   run.sh            render, then run nginx under a small supervisor (below)
#   run.sh --check    only check that nginx and its Lua libraries are installed
#   run.sh --render   only render; prints the path of the rendered nginx.conf
#
# Environment (defaults in brackets):
#   ROOST_GATE_PORT             public port                          [8080]
#   ROOST_GATE_PREFIX           nginx prefix: conf, pid, temp files  [/tmp/roost-gate]
#   ROOST_ENVOY_ADDR            host:port of Envoy's public listener [127.0.0.1:10000]
#                               (a host name: every IPv4 address it resolves to, followed)
#   ROOST_GATE_RESOLVE_EVERY_S  how often that host name is resolved again, seconds  [2]
#   ROOST_REDIS_URL             Redis, redis://[:password@]host:port/ (a host name needs a resolver)
#                                                                    [redis://127.0.0.1:6379/]
#   ROOST_REDIS_PASSWORD_FILE   a file holding Redis's password, put into ROOST_REDIS_URL  [none]
#   ROOST_STATSD_ADDR           host:port of the statsd-listener, where the gate's own
#                               answers (503, 504, 502) are counted   [none: not counted]
#   ROOST_GATE_MAX_BODY         body limit, bytes (or 64k, 10m)      [10485760]
#   ROOST_GATE_MAX_HELD         held requests per function           [1000]
#   ROOST_GATE_ID               this gate's field in each function's held count in
#                               Redis: unique among the gates sharing one  [the host name]
#   ROOST_GATE_WAKE_TIMEOUT_MS  how long a request is held           [30000]
#   ROOST_GATE_CACHE_TTL_MS     ready/declared cache period          [1000]
#   ROOST_GATE_REPUBLISH_MS     re-check and re-publish while held   [2000]
#   ROOST_GATE_REDIS_TIMEOUT_MS Redis connect/read timeout           [1000]
#   ROOST_GATE_PING_MS          idle subscription PINGs Redis after  [5000]
#   ROOST_GATE_EMPTY_WAIT_MS    a request waits this long for an emptied
#                               Redis to get its functions back      [2000]
#   ROOST_GATE_WORKERS          nginx worker processes               [auto]
#   ROOST_GATE_LOG_LEVEL        error_log level                      [warn]
#   ROOST_GATE_RESOLVER         DNS server for Redis's host name      [first nameserver of /etc/resolv.conf]
#   ROOST_GATE_NGINX            the nginx binary                     [openresty, else nginx]
#   ROOST_GATE_LUA_PATH         a folder searched first for Lua modules (e.g. a
#                               lua-resty-redis of your own: resty/redis.lua)  [none]
# The old ROOST_REDIS_HOST and ROOST_REDIS_PORT are still read (with a warning) when
# ROOST_REDIS_URL is unset.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
mode=${1:-run}

: "${ROOST_GATE_PORT:=8080}"
: "${ROOST_GATE_PREFIX:=/tmp/roost-gate}"
: "${ROOST_ENVOY_ADDR:=127.0.0.1:10000}"
if [ -z "${ROOST_REDIS_URL:-}" ]; then
  for old in ROOST_REDIS_HOST ROOST_REDIS_PORT; do
    eval "set_old=\${$old:-}"
    [ -z "$set_old" ] || echo "roost gate: $old is deprecated and still read; set ROOST_REDIS_URL instead" >&2
  done
  ROOST_REDIS_URL="redis://${ROOST_REDIS_HOST:-127.0.0.1}:${ROOST_REDIS_PORT:-6379}/"
fi
if [ -n "${ROOST_REDIS_PASSWORD_FILE:-}" ]; then # compose's secrets volume
  pw=$(tr -d ' \t\r\n' < "$ROOST_REDIS_PASSWORD_FILE") || { echo "roost gate: cannot read ROOST_REDIS_PASSWORD_FILE=$ROOST_REDIS_PASSWORD_FILE" >&2; exit 1; }
  case "$pw" in "" | *[!A-Za-z0-9._~-]*) echo "roost gate: Redis's password in $ROOST_REDIS_PASSWORD_FILE must be letters, digits and . _ ~ - only" >&2; exit 1 ;; esac
  hostpart=${ROOST_REDIS_URL#*://}
  ROOST_REDIS_URL="redis://:$pw@${hostpart##*@}"
fi
: "${ROOST_GATE_MAX_BODY:=10485760}"
: "${ROOST_GATE_WORKERS:=auto}"
: "${ROOST_GATE_LOG_LEVEL:=warn}"
: "${ROOST_GATE_ID:=$(uname -n)}"
export ROOST_REDIS_URL ROOST_GATE_MAX_BODY ROOST_ENVOY_ADDR ROOST_GATE_ID

die() {
  echo "roost gate: $*" >&2
  exit 1
}
install_hint="install Debian's nginx-light libnginx-mod-http-lua lua-nginx-redis lua-cjson lua-resty-core (apt-get install ...), or use OpenResty"

# --- which nginx, and does it need the Lua module loaded -------------------------------
if [ -n "${ROOST_GATE_NGINX:-}" ]; then
  bin=$(command -v "$ROOST_GATE_NGINX" 2>/dev/null) || die "ROOST_GATE_NGINX=$ROOST_GATE_NGINX is not a program: $install_hint"
elif command -v openresty >/dev/null 2>&1; then
  bin=$(command -v openresty)
elif command -v nginx >/dev/null 2>&1; then
  bin=$(command -v nginx)
elif [ -x /usr/sbin/nginx ]; then
  bin=/usr/sbin/nginx
else
  die "no nginx found: $install_hint"
fi
version=$("$bin" -V 2>&1) || die "$bin -V failed ($version): $install_hint"
modules=""
case "$version" in
  *ngx_lua* | *lua-nginx-module* | *openresty*)
    ;; # OpenResty: Lua, resty.core and resty.redis built in
  *)
    moddir=$(printf '%s\n' "$version" | sed -n 's/.*--modules-path=\([^ ]*\).*/\1/p')
    [ -n "$moddir" ] || moddir=/usr/lib/nginx/modules
    for m in ndk_http_module ngx_http_lua_module; do
      [ -f "$moddir/$m.so" ] || die "$moddir/$m.so is missing: $install_hint"
      modules="${modules}load_module $moddir/$m.so;
"
    done
    found() {
      for f in "$@"; do [ -f "$f" ] && return 0; done
      return 1
    }
    found /usr/share/lua/5.1/resty/core.lua /usr/local/share/lua/5.1/resty/core.lua ||
      die "resty.core (lua-resty-core) is missing: $install_hint"
    found /usr/share/lua/5.1/nginx/redis.lua /usr/share/lua/5.1/resty/redis.lua \
      /usr/local/share/lua/5.1/resty/redis.lua "${ROOST_GATE_LUA_PATH:-/nonexistent}/resty/redis.lua" ||
      die "no Redis client for Lua (lua-nginx-redis) found: $install_hint"
    found /usr/lib/*/lua/5.1/cjson.so /usr/lib/lua/5.1/cjson.so /usr/local/lib/lua/5.1/cjson.so ||
      die "lua-cjson is missing: $install_hint"
    ;;
esac
[ "$mode" = "--check" ] && { echo "roost gate: $bin is ready"; exit 0; }

# --- validate what goes into the configuration ------------------------------------------
expect() { # value, extended regex, what
  printf '%s\n' "$1" | grep -Eqx "$2" || die "$3 must match $2, got '$1'"
}
expect "$ROOST_GATE_PORT" '[0-9]{1,5}' ROOST_GATE_PORT
expect "$ROOST_REDIS_URL" 'redis://(:[A-Za-z0-9._~%-]+@)?[A-Za-z0-9._-]+(:[0-9]{1,5})?(/[0-9]*)?' ROOST_REDIS_URL
expect "$ROOST_ENVOY_ADDR" '[A-Za-z0-9._-]+:[0-9]{1,5}|\[[0-9A-Fa-f:.]+\]:[0-9]{1,5}' ROOST_ENVOY_ADDR
: "${ROOST_GATE_RESOLVE_EVERY_S:=2}"
expect "$ROOST_GATE_RESOLVE_EVERY_S" '[0-9]{1,4}(\.[0-9]{1,3})?' ROOST_GATE_RESOLVE_EVERY_S
awk -v s="$ROOST_GATE_RESOLVE_EVERY_S" 'BEGIN { exit !(s + 0 > 0) }' || die "ROOST_GATE_RESOLVE_EVERY_S must be more than 0"
[ -z "${ROOST_STATSD_ADDR:-}" ] || expect "$ROOST_STATSD_ADDR" '[A-Za-z0-9._-]+:[0-9]{1,5}' ROOST_STATSD_ADDR
expect "$ROOST_GATE_MAX_BODY" '[0-9]+[kKmMgG]?' ROOST_GATE_MAX_BODY
expect "$ROOST_GATE_WORKERS" 'auto|[0-9]{1,3}' ROOST_GATE_WORKERS
expect "$ROOST_GATE_LOG_LEVEL" 'debug|info|notice|warn|error|crit|alert|emerg' ROOST_GATE_LOG_LEVEL
expect "$ROOST_GATE_ID" '[A-Za-z0-9._-]{1,128}' ROOST_GATE_ID
if [ -z "${ROOST_GATE_RESOLVER:-}" ]; then
  ROOST_GATE_RESOLVER=$(awk '$1 == "nameserver" && $2 ~ /^[0-9.]+$/ {print $2; exit}' /etc/resolv.conf 2>/dev/null || true)
  if [ -z "$ROOST_GATE_RESOLVER" ]; then
    v6=$(awk '$1 == "nameserver" && $2 ~ /^[0-9a-fA-F:]+$/ {print $2; exit}' /etc/resolv.conf 2>/dev/null || true)
    [ -n "$v6" ] && ROOST_GATE_RESOLVER="[$v6]" || ROOST_GATE_RESOLVER=127.0.0.1
  fi
fi
expect "$ROOST_GATE_RESOLVER" '[][0-9A-Fa-f:. ]+' ROOST_GATE_RESOLVER
lua_path="$here/lua/?.lua"
[ -n "${ROOST_GATE_LUA_PATH:-}" ] && lua_path="$ROOST_GATE_LUA_PATH/?.lua;$lua_path"
case "$lua_path" in *'|'* | *'&'* | *'\'* | *'"'*) die "the Lua path $lua_path has a character sed cannot take" ;; esac

# --- Envoy's addresses -----------------------------------------------------------------
# nginx resolves a host name in an upstream's `server` line once, when it loads the
# configuration, and then sends to that address for good. Envoy's name may stand for
# several Envoys (Swarm: two tasks behind `envoy`, DNS round robin), each replaced by one
# on a new address when it dies. So a name is resolved here instead: the upstreams get one
# `server` line per IPv4 address (sorted: the same set renders the same text), and the
# loop at the end resolves it again every ROOST_GATE_RESOLVE_EVERY_S, re-rendering and
# reloading nginx (SIGHUP: graceful) when the set changes. An IP literal is used as it is.
envoy_port=${ROOST_ENVOY_ADDR##*:}
envoy_name=${ROOST_ENVOY_ADDR%:*}
if printf '%s\n' "$envoy_name" | grep -Eqx '[0-9]{1,3}(\.[0-9]{1,3}){3}|\[.*\]'; then
  envoy_name="" # an IP literal: no resolving
fi
one_line() { printf '%s' "$1" | tr '\n' ' '; } # for the log: addresses on one line
# The name's IPv4 addresses, one per line, sorted; nothing when it does not resolve.
# getent asks the C library (/etc/hosts, then DNS: Docker's embedded server), as nginx
# did; `timeout` keeps a dead DNS server from holding up the supervisor for long. (The
# tests put a getent of their own first in PATH: gate-tests/tests/follow_envoy.rs.)
resolve_envoy() {
  # shellcheck disable=SC2086 # $time_limit is a list of words
  $time_limit getent ahostsv4 "$envoy_name" 2>/dev/null | awk '{ print $1 }' |
    grep -Ex '[0-9]{1,3}(\.[0-9]{1,3}){3}' | sort -u -t . -k1,1n -k2,2n -k3,3n -k4,4n || true
}
time_limit=""
command -v timeout >/dev/null 2>&1 && time_limit="timeout 3"
if [ -n "$envoy_name" ]; then
  command -v getent >/dev/null 2>&1 || die "getent (Debian's libc-bin) is missing: it resolves ROOST_ENVOY_ADDR's host $envoy_name"
  # At start Envoy's name may not exist yet (Swarm registers a task's name once it
  # runs): wait for it rather than exit and be restarted in a loop, for a while.
  resolve_wait=60
  give_up=$(($(date +%s) + resolve_wait))
  envoy_addrs=$(resolve_envoy)
  if [ -z "$envoy_addrs" ]; then
    echo "roost gate: ROOST_ENVOY_ADDR's host $envoy_name does not resolve to an IPv4 address yet; trying again every second for up to $resolve_wait s" >&2
    while envoy_addrs=$(resolve_envoy) && [ -z "$envoy_addrs" ]; do
      [ "$(date +%s)" -lt "$give_up" ] || die "ROOST_ENVOY_ADDR's host $envoy_name did not resolve to an IPv4 address within $resolve_wait s (getent ahostsv4 $envoy_name)"
      sleep 1
    done
  fi
  echo "roost gate: Envoy ($envoy_name) at $(one_line "$envoy_addrs"), port $envoy_port" >&2
else
  envoy_addrs=""
fi
# The `server` directives for Envoy: ROOST_ENVOY_ADDR itself, or one per address (the
# lines after the first start with the marker line's indent: sed's \1).
envoy_servers() {
  if [ -z "$envoy_name" ]; then
    printf 'server %s max_fails=0;' "$ROOST_ENVOY_ADDR"
    return
  fi
  sep=""
  for ip in $envoy_addrs; do
    printf '%sserver %s:%s max_fails=0;' "$sep" "$ip" "$envoy_port"
    sep='\
\1'
  done
}

# --- render ---------------------------------------------------------------------------
prefix=$ROOST_GATE_PREFIX
case "$prefix" in *'|'* | *'&'* | *'\'*) die "ROOST_GATE_PREFIX=$prefix has a character sed cannot take" ;; esac
# The stand-in for an unreachable Envoy (nginx.conf) listens on a unix socket in the prefix.
sock=$prefix/envoy-down.sock
[ "${#sock}" -lt 108 ] || die "ROOST_GATE_PREFIX=$prefix is too long for a unix socket path ($sock)"
mkdir -p "$prefix/logs" # OpenResty opens logs/ before it reads -e
conf=$prefix/nginx.conf
line() { # marker, directive: replaces the line that ends in #@marker
  printf 's|^\\([[:space:]]*\\)[^#]*#@%s$|\\1%s  #@%s|\n' "$1" "$2" "$1"
}
# Renders $conf (replaced whole, by a rename: a master reloading or starting reads either
# the old file or the new one). Run at start, and again when Envoy's addresses change.
render() {
  {
    printf '# Rendered by %s/run.sh from %s/nginx.conf; edit that one.\n' "$here" "$here"
    printf '%s' "$modules"
    sed -e '/#@module$/d' \
      -e "$(line workers "worker_processes $ROOST_GATE_WORKERS;")" \
      -e "$(line log_level "error_log stderr $ROOST_GATE_LOG_LEVEL;")" \
      -e "/#@lua_path\$/s|\\\$prefix/lua/?\\.lua|$lua_path|" \
      -e "$(line resolver "resolver $ROOST_GATE_RESOLVER valid=10s ipv6=off;")" \
      -e "$(line envoy "$(envoy_servers)")" \
      -e "$(line envoy_down "server unix:$sock backup;")" \
      -e "$(line envoy_down_listen "listen unix:$sock;")" \
      -e "$(line listen "listen $ROOST_GATE_PORT reuseport;")" \
      -e "$(line max_body "client_max_body_size $ROOST_GATE_MAX_BODY;")" \
      -e "$(line body_buffer "client_body_buffer_size $ROOST_GATE_MAX_BODY;")" \
      "$here/nginx.conf"
  } >"$conf.tmp" || die "cannot render $conf.tmp"
  for marker in workers log_level lua_path resolver envoy envoy_down envoy_down_listen listen max_body body_buffer; do
    grep -q "#@$marker\$" "$conf.tmp" || die "nginx.conf lost its #@$marker line"
  done
  grep -q "$here/lua/" "$conf.tmp" || die "nginx.conf lost its lua_package_path"
  mv "$conf.tmp" "$conf"
}
render
[ "$mode" = "--render" ] && { echo "$conf"; exit 0; }

# --- run: nginx under a small supervisor ---------------------------------------------
# This shell stays (PID 1 in compose) and nginx's master runs as its child, so a master
# that is killed (kill -9, a crash) is replaced instead of taking the gate down:
#  - its workers live on and keep serving (nginx workers do not need their master);
#  - a new master binds the same port beside them (listen ... reuseport) and starts its
#    own workers;
#  - once it has bound (its pid is in the pid file), the old workers get SIGQUIT: they
#    stop accepting, finish their requests (held ones included) and exit.
# The master runs in a session of its own (setsid), so its workers form a process group
# named by its pid: that is how the old workers are found once it is gone. If this shell
# is killed, the master gets SIGTERM (setpriv --pdeathsig) and no nginx is left behind.
# QUIT (graceful stop: compose's stop_signal), TERM and INT (fast stop), HUP (reload)
# and USR1 (reopen logs) are passed on to the master; a master that exits on its own
# ends this shell with its status. gateway-lua/README.md has the measured figures.
# With Envoy given by name, the same loop follows its addresses (see "Envoy's addresses").
launch=""
command -v setpriv >/dev/null 2>&1 && launch="setpriv --pdeathsig TERM"
if command -v setsid >/dev/null 2>&1; then
  launch="setsid $launch"
else
  echo "roost gate: setsid (util-linux) is missing: a killed nginx master is replaced, but its old workers are left running" >&2
fi
master=""
stopping=""
start_nginx() {
  rm -f "$sock" # a killed master leaves it behind, and nginx cannot bind over it
  # shellcheck disable=SC2086 # $launch is a list of words
  $launch "$bin" -p "$prefix/" -c "$conf" -e stderr &
  master=$!
  started=$(date +%s)
}
pass_on() { # signal, "stop" when it stops nginx
  [ -z "${2:-}" ] || stopping=1
  [ -z "$master" ] || kill -"$1" "$master" 2>/dev/null || true
}
trap 'pass_on QUIT stop' QUIT
trap 'pass_on TERM stop' TERM
trap 'pass_on INT stop' INT
trap 'pass_on HUP' HUP
trap 'pass_on USR1' USR1

# Envoy's name resolved again; when its set of addresses changed, the configuration is
# rendered for the new set and nginx reloaded (SIGHUP: new workers on the new
# configuration, the old ones finish their requests; the listening sockets are kept). A
# name that resolves to nothing (its DNS server away, every task gone at once) keeps the
# configuration as it is: nginx never gets an upstream without a server.
unresolved=""
follow_envoy() {
  now=$(resolve_envoy)
  if [ -z "$now" ]; then
    [ -n "$unresolved" ] ||
      echo "roost gate: $envoy_name does not resolve now; Envoy stays at $(one_line "$envoy_addrs") until it does" >&2
    unresolved=1
    return 0
  fi
  [ -z "$unresolved" ] || echo "roost gate: $envoy_name resolves again" >&2
  unresolved=""
  [ "$now" != "$envoy_addrs" ] || return 0
  echo "roost gate: Envoy ($envoy_name) moved from $(one_line "$envoy_addrs") to $(one_line "$now"), port $envoy_port: reloading nginx" >&2
  envoy_addrs=$now
  # In a subshell: a render that fails (nginx.conf edited meanwhile, a full disk) leaves
  # nginx as it is instead of ending the supervisor.
  if (render); then
    kill -HUP "$master" 2>/dev/null || true
  else
    echo "roost gate: the configuration for Envoy at $(one_line "$now") could not be rendered; nginx keeps the one it has" >&2
  fi
}
# The clock for it: a child that sends this shell SIGALRM every ROOST_GATE_RESOLVE_EVERY_S,
# which ends the loop's `wait` like the signals above. It dies with this shell
# (--pdeathsig), or at its first tick after, when it finds the shell gone.
tick=""
trap 'tick=1' ALRM
if [ -n "$envoy_name" ]; then
  pdeath=""
  command -v setpriv >/dev/null 2>&1 && pdeath="setpriv --pdeathsig TERM"
  # shellcheck disable=SC2016,SC2086 # $1 and $2 are sh -c's; $pdeath is a list of words
  $pdeath sh -c 'while sleep "$1"; do kill -ALRM "$2" || exit 0; done' ticker "$ROOST_GATE_RESOLVE_EVERY_S" $$ \
    </dev/null >/dev/null 2>&1 &
  ticker=$!
  trap 'kill "$ticker" 2>/dev/null || true' EXIT
fi

start_nginx
# A stop that came before nginx was there to be told.
[ -z "$stopping" ] || kill -TERM "$master" 2>/dev/null || true
while :; do
  rc=0
  wait "$master" || rc=$?
  # A trapped signal ends `wait` early: the master is still there.
  if kill -0 "$master" 2>/dev/null; then
    if [ -n "$tick" ]; then
      tick=""
      [ -n "$stopping" ] || follow_envoy
    fi
    continue
  fi
  # It exited on its own (a stop asked for, `nginx -s quit`, a bad start): so do we.
  if [ -n "$stopping" ] || [ "$rc" -le 128 ]; then
    exit "$rc"
  fi
  old=$master
  echo "roost gate: nginx's master (pid $old) was killed (exit status $rc); starting a new one; its workers finish their requests and quit" >&2
  # A master that keeps dying at once is restarted once a second, not in a busy loop.
  [ $(($(date +%s) - started)) -ge 2 ] || sleep 1
  start_nginx
  i=0
  while [ "$(cat "$prefix/nginx.pid" 2>/dev/null)" != "$master" ] && [ $i -lt 200 ] && kill -0 "$master" 2>/dev/null; do
    sleep 0.02
    i=$((i + 1))
  done
  case "$launch" in setsid*) kill -QUIT -"$old" 2>/dev/null || true ;; esac
done
