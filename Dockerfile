# syntax=docker/dockerfile:1
# Build: docker build -t keybridge .
# Base images are pinned by version tag; pin by digest in your registry mirror.

FROM rust:1.95.0-slim-bookworm AS build
WORKDIR /src
# Dependencies first, so source edits do not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && cargo build --profile dist --locked && rm -rf src
COPY src ./src
RUN touch src/main.rs src/lib.rs && cargo build --profile dist --locked \
    && cp target/dist/keybridge /keybridge \
    && mkdir /state && chown 65532:65532 /state && chmod 0700 /state

# Distroless: no shell, no package manager; glibc + libgcc only. Runs as uid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /keybridge /usr/local/bin/keybridge
# The audit lives here (the default relative audit.path lands in the working
# directory). A volume, so `--read-only` containers can still write it; compose names it.
COPY --from=build --chown=65532:65532 /state /var/lib/keybridge
VOLUME /var/lib/keybridge
WORKDIR /var/lib/keybridge
ENV KEYBRIDGE_CONFIG=/etc/keybridge/config.yaml
EXPOSE 8080 9900
USER 65532:65532
# Ready = every client holds a settled token and the audit is writable. `keybridge
# health` asks the admin listener named by the config (no curl in this image).
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/usr/local/bin/keybridge", "health"]
ENTRYPOINT ["/usr/local/bin/keybridge"]
CMD ["run"]
