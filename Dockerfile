# DashStream Gateway image: the three binaries (ingest, gateway, the dashstream CLI) on a slim
# Debian, run as a numeric non-root user. Base images are pinned to exact versions (add
# @sha256 digests in your build pipeline). Checked statically by deploy/check-dockerfile.sh.
#   docker build -t dashstream/dashstream:0.1.0 .

FROM rust:1.95.0-slim-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential cmake pkg-config libssl-dev zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p dashstream-ingest -p dashstream-gateway -p dashstream \
 && mkdir -p /out \
 && cp target/release/ingest target/release/gateway target/release/dashstream /out/

FROM debian:bookworm-20251117-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 zlib1g \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/ingest /out/gateway /out/dashstream /usr/local/bin/
# The chart's podSecurity.runAsUser / runAsGroup.
USER 10001:10001
EXPOSE 8080 9101 9102
ENTRYPOINT []
CMD ["gateway", "--help"]
