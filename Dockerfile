# syntax=docker/dockerfile:1
# The one Portcullis image, for both `portcullis controller` and `portcullis proxy` (the
# Helm chart's image.repository defaults to ghcr.io/portcullis-dev/portcullis).
#
#   docker build -t ghcr.io/portcullis-dev/portcullis:0.1.0 .
#
# Stage 1 builds the release binary with the toolchain rust-toolchain.toml pins (charts/test.sh
# checks RUST_VERSION against it). rustls/jsonwebtoken use aws-lc-rs: aws-lc-sys compiles
# its C sources with the image's gcc through its `cc` builder and ships pregenerated
# bindings for Linux x86_64/aarch64, so neither cmake nor clang is needed.
# Stage 2 is distroless: glibc and libgcc (what the binary links), CA certificates, no
# shell, no package manager; it runs as the numeric non-root user 65532.

ARG RUST_VERSION=1.95.0

FROM rust:${RUST_VERSION}-bookworm AS build
# The pinned toolchain is the image's own: no rustfmt/clippy download for a build.
ARG RUST_VERSION
ENV RUSTUP_TOOLCHAIN=${RUST_VERSION} CARGO_INCREMENTAL=0
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --profile dist --locked -p portcullis \
 && cp target/dist/portcullis /portcullis \
 && /portcullis --version

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /portcullis /portcullis
USER 65532:65532
# 8080: proxy traffic, 9901: proxy admin and metrics, 9800: controller config stream and metrics.
EXPOSE 8080 9901 9800
ENTRYPOINT ["/portcullis"]
CMD ["--help"]
