# A Roost service image from the host's own release build (no registry needed).
FROM roost/platform-base:bookworm
ARG BIN
COPY ${BIN} /usr/local/bin/roost-service
USER 65534:65534
ENTRYPOINT ["/usr/local/bin/roost-service"]
