# syntax=docker/dockerfile:1
# The lifeboat image: the one binary, which is the controller (`controller`), the server and
# standby of deploy/server.yaml and deploy/standby.yaml, and the mover Jobs (`volume backup`,
# `volume restore`, ...: lifeboat gives the Jobs args only, so the ENTRYPOINT is the binary).
#
#   docker build -t ghcr.io/lifeboat-dr/lifeboat:0.1.0 \
#     --build-arg LIFEBOAT_GIT_COMMIT=$(git rev-parse --short=12 HEAD) .
#
# Not built in this repository's CI (its machines run no container engine).
#
# The final stage is distroless cc: glibc and libgcc_s, which is all the binary links to
# dynamically (rusqlite's SQLite is bundled, ring and zstd are static; `ldd` of a bookworm
# build shows libc, libm, libgcc_s). It runs as the image's user nonroot (65532). A mover Job
# that opens a raw block device owned by root:disk needs a securityContext that allows it
# (runAsUser 0 or the device's group); the image does not decide that.

ARG RUST_IMAGE=rust:1.89-bookworm
ARG BASE_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${RUST_IMAGE} AS builder
WORKDIR /src
# build.rs finds no .git in the build context (.dockerignore): the commit for `lifeboat
# version` comes from here, "unknown" when not given.
ARG LIFEBOAT_GIT_COMMIT=
ENV LIFEBOAT_GIT_COMMIT=${LIFEBOAT_GIT_COMMIT}
# What the library and the binary are built from; tests/, benches/ and fixtures/ are not needed.
COPY Cargo.toml Cargo.lock build.rs ./
COPY src/ src/
COPY schema/ schema/
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin lifeboat \
 && strip --strip-all -o /lifeboat target/release/lifeboat \
 && /lifeboat version

FROM ${BASE_IMAGE}
ARG VERSION=0.1.0
ARG LIFEBOAT_GIT_COMMIT=
LABEL org.opencontainers.image.title="lifeboat" \
      org.opencontainers.image.description="Disaster recovery for Kubernetes applications: encrypted, deduplicated, incremental backups of volumes and configuration to S3" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${LIFEBOAT_GIT_COMMIT}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="lifeboat-dr" \
      org.opencontainers.image.base.name="gcr.io/distroless/cc-debian12:nonroot"
COPY --from=builder /lifeboat /usr/local/bin/lifeboat
USER nonroot
ENTRYPOINT ["/usr/local/bin/lifeboat"]
CMD ["--help"]
