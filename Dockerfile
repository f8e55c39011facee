# ClusterODM in a container, run like the original's image:
#
#   docker build -t clusterodm .
#   docker run --rm -ti -p 3000:3000 -p 8080:8080 -p 10000:10000 clusterodm [flags]
#
# Flags after the image name go straight to `clusterodm` (e.g. `--admin-pass secret`).
# State (clusterodm.db, staged uploads, a pre-filled nodes.json) lives in the volume
# /var/lib/clusterodm. Any Debian-like base with python3 (>= 3.11) and its venv module works:
#   docker build --build-arg BASE=debian:bookworm-slim ...   (needs python3-venv installed)
ARG BASE=python:3.11-slim

FROM ${BASE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
COPY pyproject.toml README.md /src/
COPY clusterodm /src/clusterodm
RUN python3 -m venv /opt/clusterodm \
 && /opt/clusterodm/bin/python -m pip install --quiet /src \
 && /opt/clusterodm/bin/clusterodm --version
COPY packaging/healthcheck.py /opt/clusterodm/healthcheck.py

FROM ${BASE}
LABEL org.opencontainers.image.title="ClusterODM" \
      org.opencontainers.image.description="A NodeODM-API load balancer and task tracker" \
      org.opencontainers.image.licenses="AGPL-3.0-or-later"
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
COPY --from=build /opt/clusterodm /opt/clusterodm
RUN groupadd --system --gid 10001 clusterodm \
 && useradd --system --uid 10001 --gid clusterodm --home-dir /var/lib/clusterodm \
      --no-create-home --shell /usr/sbin/nologin clusterodm \
 && mkdir -p /var/lib/clusterodm \
 && chown clusterodm:clusterodm /var/lib/clusterodm \
 && chmod 0750 /var/lib/clusterodm
USER clusterodm:clusterodm
WORKDIR /var/lib/clusterodm
VOLUME ["/var/lib/clusterodm"]
# proxy (NodeODM API), admin CLI (telnet), admin web page
EXPOSE 3000 8080 10000
# Reads the running cluster's own flags, so `--port`, `--bind` and TLS flags need no change here.
HEALTHCHECK --interval=30s --timeout=10s --start-period=10s --retries=3 \
  CMD ["/opt/clusterodm/bin/python", "/opt/clusterodm/healthcheck.py"]
ENTRYPOINT ["/opt/clusterodm/bin/clusterodm", "--data-dir", "/var/lib/clusterodm"]
CMD []
