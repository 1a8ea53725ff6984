#!/usr/bin/env bash
# Builds the portcullis image from docker/Dockerfile with the repository root
# as the context (`make docker`; the container e2e test calls it too when the
# image is missing or its sources changed). Prints the build time and the
# image size at the end. The layer cache makes a rebuild with unchanged
# sources take seconds; a change under src/ rebuilds only dist/.
#
# Environment (all optional):
#   ENGINE  podman or docker (default: podman when installed, else docker)
#   IMAGE   tag to build (default localhost/portcullis:latest)
#   BASE    the FROM image (default: localhost/portcullis-base:bookworm-node20
#           when that image exists, made by scripts/container-setup.sh where no
#           registry can be reached; else the official node:20-bookworm-slim)
#   PORTCULLIS_BUILD_CA  PEM bundle npm needs behind a TLS-intercepting proxy
#           (default: $NODE_EXTRA_CA_CERTS, the one this host's Node uses,
#           else /etc/ssl/certs/ca-certificates.crt when present);
#           handed to the build as the secret `ca`, never stored in a layer
#   BUILD_ARGS  more arguments for `<engine> build` (e.g. --no-cache)
#
# `docker/build.sh --sources-hash` only prints the hash of the build inputs
# that every image it builds carries as the label org.portcullis.sources: the
# container test rebuilds only when the image's label differs.
set -euo pipefail
cd "$(dirname "$0")/.."

# What goes into the image: the paths .dockerignore lets in, and the build files.
SOURCES=(package.json package-lock.json tsconfig.json tsconfig.build.json bin src native/binding.gyp native/src docker/Dockerfile .dockerignore)
sources_hash() {
  find "${SOURCES[@]}" -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16
}
if [ "${1:-}" = --sources-hash ]; then sources_hash; exit 0; fi

ENGINE=${ENGINE:-$(command -v podman >/dev/null && echo podman || echo docker)}
IMAGE=${IMAGE:-localhost/portcullis:latest}
LOCAL_BASE=localhost/portcullis-base:bookworm-node20
if [ -z "${BASE:-}" ]; then
  if "$ENGINE" image inspect "$LOCAL_BASE" >/dev/null 2>&1; then BASE=$LOCAL_BASE; else BASE=docker.io/library/node:20-bookworm-slim; fi
fi

args=(build -f docker/Dockerfile -t "$IMAGE" --build-arg "BASE=$BASE" --label "org.portcullis.sources=$(sources_hash)")
case "$ENGINE" in
  # The OCI image format has no HEALTHCHECK; the docker format keeps it.
  podman|buildah) args+=(--format docker) ;;
  # RUN --mount (the CA secret) needs BuildKit; docker 23+ uses it anyway.
  docker) export DOCKER_BUILDKIT=1 ;;
esac
ca=${PORTCULLIS_BUILD_CA:-${NODE_EXTRA_CA_CERTS:-}}
# Else the system's bundle: extra CAs only add to Node's own, so a bundle the
# host trusts costs nothing, and where a proxy re-signs TLS it is the one with
# the proxy's CA in it.
if [ -z "$ca" ] && [ -r /etc/ssl/certs/ca-certificates.crt ]; then ca=/etc/ssl/certs/ca-certificates.crt; fi
if [ -n "$ca" ]; then
  [ -r "$ca" ] || { echo "docker/build.sh: CA bundle $ca is not readable" >&2; exit 1; }
  args+=(--secret "id=ca,src=$ca")
fi
# shellcheck disable=SC2206  # BUILD_ARGS is a list of words on purpose
if [ -n "${BUILD_ARGS:-}" ]; then args+=($BUILD_ARGS); fi
args+=(.)

old_id=$("$ENGINE" image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)
echo "docker/build.sh: $ENGINE ${args[*]}"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
start=$(date +%s.%N)
"$ENGINE" "${args[@]}" 2>&1 | tee "$log"
end=$(date +%s.%N)
# The image this tag named before is now untagged: drop it (only its own top
# layers go; the stages' layer cache stays). In use by a container: kept.
new_id=$("$ENGINE" image inspect --format '{{.Id}}' "$IMAGE")
if [ -n "$old_id" ] && [ "$old_id" != "$new_id" ]; then "$ENGINE" rmi "$old_id" >/dev/null 2>&1 || true; fi
# podman keeps each stage's last image untagged as layer cache; those of
# earlier builds (not named by any step of this one) are dropped, so repeated
# builds do not pile up copies of node_modules and dist/.
if [ "$ENGINE" = podman ]; then
  used=$(grep -oE -- '--> (Using cache )?[0-9a-f]{11,64}' "$log" | grep -oE '[0-9a-f]{11,64}$' | cut -c1-11 | sort -u)
  for id in $(podman images --filter dangling=true --format '{{.ID}}'); do
    grep -qx "${id:0:11}" <<<"$used" || podman rmi "$id" >/dev/null 2>&1 || true
  done
fi
size=$("$ENGINE" image ls --format '{{.Size}}' "$IMAGE" | head -1)
secs=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }')
echo "docker/build.sh: built $IMAGE (FROM $BASE) in $secs s, size $size"
