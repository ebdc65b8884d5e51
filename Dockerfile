# syntax=docker/dockerfile:1
# slo-probe: multi-stage build; the runtime image holds the binary only, with the CA roots and
# the shared libraries it links (OpenSSL and zlib, for librdkafka), and runs as a non-root user.
#
#   docker build -t slo-probe --build-arg SLO_PROBE_COMMIT=$(git rev-parse --short=12 HEAD) .
#   docker run --rm -v "$PWD/probes:/etc/slo-probe/probes:ro" slo-probe smoke   # embedded cluster
#
# The Helm chart runs it with a read-only root filesystem as uid/gid 65532.

ARG RUST_VERSION=1.95
ARG DEBIAN=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN} AS build
# librdkafka is built from source by rdkafka-sys (ssl, zstd features).
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential pkg-config libssl-dev zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# .git stays out of the build context: the commit `--version` shows comes from this argument.
ARG SLO_PROBE_COMMIT=unknown
ENV SLO_PROBE_COMMIT=${SLO_PROBE_COMMIT}
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin slo-probe \
 && install -D -m 0755 target/release/slo-probe /out/slo-probe

FROM debian:${DEBIAN}-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 zlib1g \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 65532 slo-probe \
 && useradd --system --uid 65532 --gid 65532 --no-create-home --shell /usr/sbin/nologin slo-probe
COPY --from=build /out/slo-probe /usr/local/bin/slo-probe
USER 65532:65532
WORKDIR /etc/slo-probe
EXPOSE 9747
ENTRYPOINT ["/usr/local/bin/slo-probe"]
CMD ["run"]
