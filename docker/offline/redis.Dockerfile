# Debian's redis-server, standing in for the official redis image offline. Its data goes to
# /data (compose mounts a named volume there), owned by the redis user it runs as. Compose
# passes its configuration file first (the password, from the secrets volume), as the
# official image's entry point takes it; with a password Redis listens on every address.
FROM roost/platform-base:bookworm
RUN mkdir -p /data && chown redis:redis /data
USER redis
WORKDIR /data
ENTRYPOINT ["redis-server"]
