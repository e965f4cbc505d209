# Nebula: a multi-stage build. The runtime image holds one static-enough binary and nothing else.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY static ./static
COPY benches ./benches
RUN cargo build --release --bin nebula && strip target/release/nebula

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* && useradd --system --home /data nebula && mkdir /data && chown nebula /data
COPY --from=build /src/target/release/nebula /usr/local/bin/nebula
USER nebula
ENV NEBULA_LISTEN=0.0.0.0:8080 NEBULA_DATA_DIR=/data
VOLUME /data
EXPOSE 8080
HEALTHCHECK --interval=5s --timeout=2s CMD curl -sf http://127.0.0.1:8080/healthz || exit 1
# SIGTERM starts the graceful shutdown (clients get close 1001, everything is committed).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/nebula"]
