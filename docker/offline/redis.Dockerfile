# Debian's redis-server, standing in for the official redis image offline.
FROM roost/platform-base:bookworm
USER redis
ENTRYPOINT ["redis-server", "--bind", "0.0.0.0", "--protected-mode", "no", "--save", "", "--appendonly", "no"]
