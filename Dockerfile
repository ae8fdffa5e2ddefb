# Everest image: both CSI daemons (everest-controller, everest-node) and the FUSE mounter
# supervisor (everest-mounter) on a slim Debian with the
# host tools the node side runs (see helm/tests/dockerfile-lint.sh, which derives that list from
# backends/core/src/host/linux.rs and checks it is installed here).
#   docker build -t REGISTRY/everest:0.1.0 .        (see docs/install.md)
#
# Base images are pinned by digest so a rebuild gets the same bytes. The digests were recorded
# from public references, not resolved on the development machines (no registry access there):
# refresh both with `docker buildx imagetools inspect <tag>` when bumping.
ARG RUST_IMAGE=rust:1.99-bookworm@sha256:fbc3a359627c6b5d9c8b20aae5c413a87392954f020006d7a9f7d95938964b23
ARG RUNTIME_IMAGE=debian:bookworm-slim@sha256:4b50eb66f977b4062683ff434ef18ac191da862dbe966961bc11990cf5791a8d

# ---- build: the two daemons and the mounter supervisor, release profile, no system protoc
# needed (protox)
FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p everest-controller -p everest-node -p everest-obs --bins \
 && install -D -m 0755 target/release/everest-controller /out/everest-controller \
 && install -D -m 0755 target/release/everest-node /out/everest-node \
 && install -D -m 0755 target/release/everest-mounter /out/everest-mounter

# ---- runtime
FROM ${RUNTIME_IMAGE}
# Every filesystem tool the node may call: e2fsprogs (mkfs.ext4, e2fsck, resize2fs, dumpe2fs),
# xfsprogs (mkfs.xfs, xfs_growfs), btrfs-progs (mkfs.btrfs, btrfs), util-linux (blkid,
# blockdev), mount (mount, umount); nfs-common for file volumes; s3fs and fuse3 (fusermount)
# for object volumes, rclone for their second mounter; ca-certificates for the cloud
# endpoints.
# hadolint ignore=DL3008
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      ca-certificates e2fsprogs xfsprogs btrfs-progs util-linux mount nfs-common s3fs rclone fuse3 \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/everest-controller /out/everest-node /out/everest-mounter /usr/local/bin/
# The image writes nothing at run time, so both daemons run with a read-only root filesystem
# (the chart mounts /tmp and /run/everest). The controller runs as this unprivileged user; the
# node plugin's pod overrides it with root (it formats and mounts devices).
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/everest-controller"]
