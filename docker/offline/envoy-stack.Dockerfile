# Envoy with Roost's entry point and bootstrap template baked in at /roost-envoy, for the
# Swarm stack (swarm/roost-stack.yml): a bind mount of ./envoy would need the folder on
# every node. Built by scripts/swarm.sh from a context holding envoy/; BASE is the
# offline Envoy (scripts/build-offline-images.sh), or envoyproxy/envoy:v1.40.0 where a
# registry is reachable.
ARG BASE=roost/envoy:offline
FROM ${BASE}
COPY envoy /roost-envoy
ENTRYPOINT ["/roost-envoy/entrypoint.sh"]
