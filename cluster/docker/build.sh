#!/usr/bin/env bash
# Build and push the rlhf image under a per-build tag, on a base image pinned by digest, and
# print the immutable reference (REPOSITORY:git-<commit>@sha256:<digest>) to put in the image:
# fields of cluster/kuberay/*.yaml (head, workers, RayJob submitter).
#
#   cluster/docker/build.sh ghcr.io/example-org/rlhf
#
# Refuses a checkout with uncommitted changes: the tag names the commit the image was built from.
set -euo pipefail
REPOSITORY=${1:?usage: cluster/docker/build.sh REGISTRY/NAME (e.g. ghcr.io/example-org/rlhf)}
cd "$(git -C "$(dirname "$0")" rev-parse --show-toplevel)"
if [ -n "$(git status --porcelain)" ]; then
    echo "uncommitted changes: commit them first (the image tag names a commit)" >&2
    exit 1
fi
TAG="git-$(git rev-parse --short=12 HEAD)"

# The registry digest of a local image under repository $1 (an image can carry several).
digest_of() {
    docker inspect --format '{{range .RepoDigests}}{{println .}}{{end}}' "$2" | sed -n "s|^$1@||p" | head -n 1
}
RAY_VERSION=$(sed -n 's/^ARG RAY_VERSION=//p' cluster/docker/Dockerfile)
BASE="rayproject/ray:${RAY_VERSION}-py311-gpu"
docker pull --quiet "$BASE" >/dev/null
BASE_DIGEST=$(digest_of rayproject/ray "$BASE")
[ -n "$BASE_DIGEST" ] || { echo "no registry digest for $BASE" >&2; exit 1; }
docker build -f cluster/docker/Dockerfile --build-arg RAY_BASE_DIGEST="$BASE_DIGEST" \
    -t "$REPOSITORY:$TAG" .
docker push --quiet "$REPOSITORY:$TAG" >/dev/null
PUSHED=$(digest_of "$REPOSITORY" "$REPOSITORY:$TAG")
[ -n "$PUSHED" ] || { echo "no registry digest for $REPOSITORY:$TAG after the push" >&2; exit 1; }
echo "$REPOSITORY:$TAG@$PUSHED"
