# Everest image: both CSI daemons (everest-controller, everest-node) on a slim Debian with the
# host tools the node side runs (mkfs/blkid/mount and the grow tools of ext4, xfs and btrfs,
# NFS and FUSE mounters).
#   docker build -t everest:0.1.0 .        (see docs/install.md)

# ---- build: the two daemons, release profile, no system protoc needed (protox)
FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p everest-controller -p everest-node \
 && install -D -m 0755 target/release/everest-controller /out/everest-controller \
 && install -D -m 0755 target/release/everest-node /out/everest-node

# ---- runtime
FROM debian:bookworm-slim
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      ca-certificates e2fsprogs xfsprogs btrfs-progs util-linux mount nfs-common s3fs rclone fuse3 \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/everest-controller /out/everest-node /usr/local/bin/
# The controller runs as this user (the chart sets it); the node plugin runs as root.
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/everest-controller"]
