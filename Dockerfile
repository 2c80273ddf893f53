# syntax=docker/dockerfile:1
# Build: docker build -t keybridge .
# Base images are pinned by version tag; pin by digest in your registry mirror.

FROM rust:1.95.0-slim-bookworm AS build
WORKDIR /src
# Dependencies first, so source edits do not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && cargo build --release --locked && rm -rf src
COPY src ./src
RUN touch src/main.rs src/lib.rs && cargo build --release --locked \
    && cp target/release/keybridge /keybridge

# Distroless: no shell, no package manager; glibc + libgcc only. Runs as uid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /keybridge /usr/local/bin/keybridge
EXPOSE 8080 9900
USER nonroot:nonroot
ENTRYPOINT ["/usr/local/bin/keybridge"]
CMD ["run", "--config", "/etc/keybridge/config.yaml"]
