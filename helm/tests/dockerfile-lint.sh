#!/usr/bin/env bash
# Lints the Dockerfile: hadolint (from the tools venv), then the project's own rules:
#  - every base image is pinned by digest (FROM, or the ARG a FROM names);
#  - every program the node's host layer runs (backends/core/src/host/linux.rs) comes from a
#    package the runtime stage installs;
#  - the final stage runs as a non-root numeric user.
#   bash helm/tests/dockerfile-lint.sh [DOCKERFILE]
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
DOCKERFILE="${1:-$REPO/Dockerfile}"
if [[ -z "${EVEREST_PYTHON:-}" ]]; then
  # shellcheck source=lib/tools.sh
  source "$HERE/lib/tools.sh"
  install_tools
fi
hadolint --failure-threshold warning "$DOCKERFILE"
echo "ok  hadolint $DOCKERFILE"
"$EVEREST_PYTHON" - "$DOCKERFILE" "$REPO/backends/core/src/host/linux.rs" <<'PY'
import re, sys
text = open(sys.argv[1]).read().replace("\\\n", " ")
host = open(sys.argv[2]).read()
problems = []
args = dict(re.findall(r"^ARG\s+(\w+)=(\S+)", text, re.M))
froms = re.findall(r"^FROM\s+(\S+)", text, re.M)
stages = set(re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", text, re.M | re.I))
for image in froms:
    m = re.fullmatch(r"\$\{?(\w+)\}?", image)
    ref = args.get(m.group(1), "") if m else image
    if image in stages:
        continue
    if not re.search(r"@sha256:[0-9a-f]{64}$", ref):
        problems.append(f"base image {image} ({ref or 'unset ARG'}) is not pinned by digest")
# Programs the host layer runs, and the Debian package of each.
PACKAGE = {"mkfs.ext4": "e2fsprogs", "mkfs.ext3": "e2fsprogs", "e2fsck": "e2fsprogs",
           "resize2fs": "e2fsprogs", "dumpe2fs": "e2fsprogs", "mkfs.xfs": "xfsprogs",
           "xfs_growfs": "xfsprogs", "xfs_db": "xfsprogs", "mkfs.btrfs": "btrfs-progs", "btrfs": "btrfs-progs",
           "blkid": "util-linux", "blockdev": "util-linux", "losetup": "mount",
           "mount": "mount", "umount": "mount"}
programs = set(re.findall(r'\b(?:run|output)\(\s*"([a-z0-9_.]+)"', host))
programs |= set(re.findall(r'\(\s*"(mkfs\.[a-z0-9]+)"', host))
programs |= set(re.findall(r'Command::new\(\s*"([a-z0-9_.]+)"', host))
if not programs:
    problems.append("found no program in the host layer: has it moved?")
last = text[text.rindex("\nFROM"):] if "\nFROM" in text else text
installs = " ".join(re.findall(r"apt-get install[^&\n]*", last))
for p in sorted(programs):
    pkg = PACKAGE.get(p)
    if pkg is None:
        problems.append(f"the node runs {p}, which has no package in this lint's table: add it")
    elif not re.search(rf"(?<![\w-]){re.escape(pkg)}(?![\w-])", installs):
        problems.append(f"the node runs {p} but the runtime stage does not install {pkg}")
users = re.findall(r"^USER\s+(\S+)", last, re.M)
if not users or not re.fullmatch(r"[1-9][0-9]*(:[1-9][0-9]*)?", users[-1]):
    problems.append(f"the final stage does not end as a non-root numeric USER (found {users})")
if problems:
    sys.exit("FAIL: Dockerfile:\n  " + "\n  ".join(problems))
print(f"ok  Dockerfile rules: digests pinned, {len(programs)} host programs installed, non-root user")
PY
