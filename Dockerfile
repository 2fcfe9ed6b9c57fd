# syntax=docker/dockerfile:1
#
# TideMQ broker image.
#   docker build -t tidemq .
#   docker run -d -p 1883:1883 -v tidemq-data:/var/lib/tidemq tidemq
#   docker run ... -v $PWD/my.conf:/etc/nanomq.conf:ro tidemq      # your configuration
# Arguments after the image name replace CMD, e.g. `tidemq check` or
# `start --conf /etc/nanomq.conf --log_level debug`.

# ---- build ----
# Same toolchain as rust-toolchain.toml (1.95.0); if they differ, rustup fetches the one the
# file names during the build.
FROM rust:1.95.0-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p tidemq-runtime --bin tidemq \
    && install -D -m 0755 target/release/tidemq /out/usr/bin/tidemq \
    && install -d -m 0700 /out/var/lib/tidemq

# ---- run ----
# glibc and libgcc (for the Rust binary), no shell, no package manager; runs as uid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot

ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="TideMQ" \
      org.opencontainers.image.description="MQTT 3.1/3.1.1/5.0 broker, compatible with NanoMQ's configuration and admin API" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0"

COPY --from=build /out/usr/bin/tidemq /usr/bin/tidemq
# The configuration at NanoMQ's path; mount your own over it (read-only is fine unless the
# admin API should save changes to it).
COPY etc/nanomq.conf /etc/nanomq.conf
# persistence.data_dir: created 0700 and owned by the broker's user, as the broker requires.
# Used once the configuration turns persistence on (it is off in the shipped file).
COPY --from=build --chown=65532:65532 /out/var/lib/tidemq /var/lib/tidemq
VOLUME /var/lib/tidemq
WORKDIR /var/lib/tidemq

# `tidemq healthcheck` reads the same file as the broker through this.
ENV TIDEMQ_CONF_PATH=/etc/nanomq.conf

# MQTT over TCP, TLS, WebSocket, secure WebSocket; the admin API. Only the listeners the
# configuration enables are open (the shipped file: MQTT/TCP on 0.0.0.0:1883, and the admin
# API on 127.0.0.1:8081 only, so publish 8081 after setting http_server.ip_addr and a new
# password).
EXPOSE 1883 8883 8083 8084 8081

# GET /readyz on the configured admin address, from inside the container: the shipped
# configuration's loopback-only admin API answers it. 503 while the store is recovered, so
# the start period allows for a long journal replay.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["/usr/bin/tidemq", "healthcheck"]

# The broker handles SIGTERM itself (graceful drain, final commit) even as PID 1.
STOPSIGNAL SIGTERM
USER 65532:65532
ENTRYPOINT ["/usr/bin/tidemq"]
CMD ["start", "--conf", "/etc/nanomq.conf"]
