# syntax=docker/dockerfile:1
# The plugin-operator image: `plugin-operator run` as a non-root user on a read-only root
# filesystem, with nothing else in the image (no shell, no package manager).
#   docker build -t plugin-operator:0.1.0 .
# The builder's Debian (bookworm) matches the runtime's (distroless cc-debian12): same glibc.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS builder
WORKDIR /src
# The whole workspace (.dockerignore leaves out target/, charts, docs…): Cargo reads every
# member's manifest and every target it declares, though only the operator's binary is built.
COPY . .
ENV CARGO_PROFILE_RELEASE_STRIP=symbols
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p plugin-operator --bin plugin-operator \
    && install -D -m 0755 target/release/plugin-operator /out/plugin-operator

FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="plugin-operator" \
      org.opencontainers.image.description="A Kubernetes operator that runs plugins" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="0.1.0"
COPY --from=builder /out/plugin-operator /usr/local/bin/plugin-operator
# nonroot (65532): the chart's runAsUser. The operator writes no files, so the root filesystem
# can be read-only; it logs to stdout.
USER 65532:65532
EXPOSE 8080 8081
ENTRYPOINT ["/usr/local/bin/plugin-operator"]
CMD ["run"]
