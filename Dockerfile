# syntax=docker/dockerfile:1
#
# webhook-enricher image: a Rust builder stage and a slim Debian runtime holding only the binary.
# The production binary: built with --no-default-features, so it holds the service (`run`,
# `receive`, `replay`, `redrive`, `check-config`) without the demo and the provider simulator (the `demo` and
# `simulator` cargo features, on by default for `cargo run -- demo` and the tests; README
# "Cargo features"). `docker run ... demo` exits 2 with a note saying so.
#
#   docker build -t webhook-enricher:0.1.0 .
#   docker run --rm webhook-enricher:0.1.0 --help
#
# The runtime user is 10001:10001, the UID the Helm chart (helm/webhook-enricher) runs as; the
# admin server (/metrics, /healthz, /readyz) listens on 9090. The binary writes nothing to disk,
# so the container runs with a read-only root filesystem.

ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS builder
# librdkafka, OpenSSL, zlib and zstd are built from source by the crates (rdkafka's ssl-vendored,
# libz-static, zstd): the image's C/C++ toolchain, make and perl are all it needs, no apt-get.
WORKDIR /build

# Dependency layer: build the locked dependencies against placeholder sources, so a change to
# src/ does not rebuild librdkafka and the rest (with the same features as the real build below,
# or cargo would build them again).
COPY Cargo.toml Cargo.lock ./
RUN mkdir src \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && cargo build --release --locked --no-default-features --bin webhook-enricher \
 && rm -rf src

COPY avro ./avro
COPY src ./src
# COPY may keep modification times older than the placeholder build: touch so cargo rebuilds the crate.
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked --no-default-features --bin webhook-enricher \
 && cp target/release/webhook-enricher /usr/local/bin/webhook-enricher

FROM ${RUNTIME_IMAGE} AS runtime
# The binary links OpenSSL statically; ca-certificates is the trust store librdkafka probes
# (ssl.ca.location=probe) and the providers' TLS verifier reads.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 webhook-enricher \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin webhook-enricher
COPY --from=builder /usr/local/bin/webhook-enricher /usr/local/bin/webhook-enricher
USER 10001:10001
# The admin port (metrics, probes), and the webhook listener of `receive` (receive.listen).
EXPOSE 9090
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/webhook-enricher"]
CMD ["run"]
