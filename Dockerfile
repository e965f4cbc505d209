# Nebula's image. The runtime stage comes first so that a machine without a registry (and
# without BuildKit, whose legacy builder builds every stage before the target) can build it
# alone with `--target runtime` and add a binary built outside: scripts/build-images.sh.
# On a machine with a registry, `docker compose up --build` builds all three stages.
ARG BASE=debian:bookworm-slim

FROM ${BASE} AS runtime
# A fixed uid: the /data and /secrets volumes keep their owner across image rebuilds.
RUN useradd --uid 10001 --user-group --no-create-home --home-dir /data \
        --shell /usr/sbin/nologin nebula \
    && mkdir -p /data /secrets && chown nebula:nebula /data /secrets && chmod 0700 /data /secrets
USER nebula
ENV NEBULA_LISTEN=0.0.0.0:8080 NEBULA_DATA_DIR=/data
# One volume per container: its SQLite log and its node id (kept in /data/node-id).
VOLUME /data
EXPOSE 8080
# Ready = accepting users and, in cluster mode, following Redis. bash's /dev/tcp instead of curl
# keeps curl and its libraries out of the image.
HEALTHCHECK --interval=2s --timeout=2s --retries=2 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8080 && printf 'GET /readyz HTTP/1.0\\r\\n\\r\\n' >&3 && head -n1 <&3 | grep -q ' 200 '"]
# SIGTERM starts the graceful drain (clients get close 1001, everything accepted is committed).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/nebula"]

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto ./proto
COPY src ./src
COPY static ./static
COPY benches ./benches
RUN cargo build --release --locked --bin nebula && strip target/release/nebula

FROM runtime
COPY --from=build /src/target/release/nebula /usr/local/bin/nebula
