# The gate with gateway-lua/ baked in at /gateway-lua, for the Swarm stack
# (swarm/roost-stack.yml): a bind mount of ./gateway-lua would need the folder on every
# node. Built by scripts/swarm.sh from a context holding gateway-lua/; BASE is the
# offline gate (Debian's nginx with Lua, scripts/build-offline-images.sh), or
# openresty/openresty:1.27.1.2-bookworm where a registry is reachable.
ARG BASE=roost/gate:offline
FROM ${BASE}
COPY gateway-lua /gateway-lua
ENTRYPOINT ["sh", "/gateway-lua/run.sh"]
