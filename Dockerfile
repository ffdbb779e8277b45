# node-agent as a container image: one agent per container, a fake node for development and tests, or a
# real node whose tasks run inside the container. Configuration is by NODE_AGENT_* variables (README).
#
#   docker build -t node-agent .          (or: podman build ...; BASE picks another Python base image)
#   docker run -e NODE_AGENT_BROKER_URL=mqtt://broker:1883 -e NODE_AGENT_NODE_ID=node1 node-agent
ARG BASE=python:3.12-slim

FROM ${BASE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python3 -m venv /opt/node-agent
COPY pyproject.toml README.md /src/
COPY node_agent /src/node_agent
RUN /opt/node-agent/bin/pip install /src

# The final image: the base plus the virtual environment; no compiler, no pip cache, no sources.
FROM ${BASE}
COPY --from=build /opt/node-agent /opt/node-agent
# Root inside the container, on purpose: the agent creates task users and runs tasks as them (useradd,
# setuid), which needs root. Nothing else in the image runs; the container is the node's boundary.
ENV PATH=/opt/node-agent/bin:$PATH \
    NODE_AGENT_BROKER_URL=mqtt://mosquitto:1883 \
    NODE_AGENT_ROOT=/var/lib/node-agent \
    NODE_AGENT_STATE_DIR=/var/lib/node-agent-state \
    NODE_AGENT_LOG_FORMAT=json
# `node-agent health` reads the liveness file the agent rewrites every few seconds: unhealthy when the
# agent is gone, its event loop stuck, or its broker unreachable.
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 CMD ["node-agent", "health"]
ENTRYPOINT ["node-agent"]
CMD ["run"]
