# Sightline: every binary in one image; the command picks the role.
#
#   docker build -t sightline .
#   docker run --rm sightline sightline-collector --help
#   docker run --rm sightline sightline-agent --help
#   docker run --rm sightline shop-service --service payment --help
#
# Stage 1 builds the workspace's binaries once, in release mode. Stage 2 is a
# slim Debian with those binaries in /usr/local/bin, run as a non-root user
# (the agent's DaemonSet and compose service run it as root, because the
# container log files it reads are root's).

FROM rust:1-bookworm AS builder
WORKDIR /src
COPY . .
# The registry and target caches survive between builds (BuildKit).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bins \
        -p sightline-collector -p sightline-agent -p sightline-demo \
    && mkdir -p /out \
    && cp target/release/sightline-collector target/release/sightline-agent \
          target/release/shop-service target/release/sightline-demo /out/

FROM debian:bookworm-slim
# ca-certificates for HTTPS scrape targets and webhooks; curl for the
# healthchecks and the compose load generator.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 sightline \
    && useradd --system --uid 10001 --gid sightline --home-dir /var/lib/sightline \
        --shell /usr/sbin/nologin sightline \
    && mkdir -p /var/lib/sightline /etc/sightline \
    && chown sightline:sightline /var/lib/sightline
COPY --from=builder /out/ /usr/local/bin/
COPY dashboards/rules/ /etc/sightline/rules/
COPY dashboards/*.json /etc/sightline/dashboards/
COPY --chmod=755 deploy/compose/loadgen.sh /usr/local/bin/sightline-loadgen
USER sightline
WORKDIR /var/lib/sightline
# OTLP gRPC, OTLP HTTP, query API and UI; 2020 is the agent's, 8000-8005 the
# demo services'.
EXPOSE 4317 4318 7070
# Without a command: a collector reachable from outside the container.
CMD ["sightline-collector", "--data-dir", "/var/lib/sightline/collector", \
     "--otlp-grpc-addr", "0.0.0.0:4317", "--otlp-http-addr", "0.0.0.0:4318", \
     "--http-addr", "0.0.0.0:7070", "--dashboards-dir", "/etc/sightline/dashboards"]
