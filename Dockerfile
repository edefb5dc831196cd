# syntax=docker/dockerfile:1
# wabridge: build with the Rust toolchain, run on a slim Debian.
#   docker build -t wabridge .
# Configuration comes from the environment (see docker-compose.yml); secrets
# from files through the *_FILE variables.

# ---------------------------------------------------------------- build
FROM rust:1.95-bookworm AS build
WORKDIR /src
# Only what the build needs (not target/, .tools/ or secrets/). A new crate or
# target directory in the workspace must be added here too.
COPY Cargo.toml Cargo.lock ./
COPY events events
COPY projections projections
COPY handlers handlers
COPY src src
COPY tests tests
COPY benches benches
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin wabridge \
    && install -m 0755 target/release/wabridge /usr/local/bin/wabridge

# ---------------------------------------------------------------- run
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /var/lib/wabridge --create-home wabridge
COPY --from=build /usr/local/bin/wabridge /usr/local/bin/wabridge
USER wabridge
WORKDIR /var/lib/wabridge
ENV WABRIDGE_LISTEN=0.0.0.0:8080
EXPOSE 8080
CMD ["wabridge", "serve"]
