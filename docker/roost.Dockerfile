# One of Roost's services (control-plane, orchestrator, statsd-listener, async-worker), built from
# source. Used by compose.yaml where a registry is reachable; machines without one use
# scripts/build-offline-images.sh instead.
FROM rust:1.88-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p roost-control-plane -p roost-orchestrator -p roost-statsd-listener -p roost-async-worker

FROM debian:bookworm-slim
ARG BIN
COPY --from=build /src/target/release/${BIN} /usr/local/bin/roost-service
USER 65534:65534
ENTRYPOINT ["/usr/local/bin/roost-service"]
