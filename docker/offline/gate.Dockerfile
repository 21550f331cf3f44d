# Debian's nginx with the Lua module and lua-nginx-redis, standing in for OpenResty
# offline. compose.yaml mounts gateway-lua/ and runs its run.sh either way.
FROM roost/platform-base:bookworm
