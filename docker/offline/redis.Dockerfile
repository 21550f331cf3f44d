# Debian's redis-server, standing in for the official redis image offline. Its data goes to
# /data (compose mounts a named volume there), owned by the redis user it runs as.
FROM roost/platform-base:bookworm
RUN mkdir -p /data && chown redis:redis /data
USER redis
WORKDIR /data
ENTRYPOINT ["redis-server", "--bind", "0.0.0.0", "--protected-mode", "no"]
