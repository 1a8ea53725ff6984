#!/usr/bin/env bash
# The container engine and the local base image that docker/Dockerfile and
# test/e2e/container.test.ts need (called by scripts/setup.sh; root only).
# Each step checks before it acts, so a second run does nothing.
#
# 1. Debian packages: podman, buildah, runc, netavark, aardvark-dns, debootstrap.
# 2. /etc/containers/containers.conf. On this machine kind podman's default
#    ulimits exceed root's hard limits, crun cannot run under hybrid cgroups,
#    and the default bridge would use private ranges (10.88/16). When the file
#    is absent (or is ours from an earlier run) we write it; when it is someone
#    else's we leave it alone and put the same settings in a drop-in,
#    /etc/containers/containers.conf.d/50-portcullis.conf, read after it.
# 3. The base image localhost/portcullis-base:bookworm-node20: no image
#    registry can be reached here, so docker/Dockerfile is built with
#    --build-arg BASE=<this image> instead of the official node:20-bookworm-slim.
#    It is Debian bookworm (debootstrap --variant=minbase) plus the host's own
#    Node 20 (the files of the nodejs package and the npm it runs), imported
#    with `podman import`. The root filesystem tarball is cached in
#    /var/cache/portcullis, keyed by the Node version, so a removed image is
#    re-imported in seconds.
#
# Environment: PORTCULLIS_NO_CONTAINER=1 skips all of this;
# PORTCULLIS_ENGINE=docker imports the base into a running dockerd instead.
set -euo pipefail

[ "${PORTCULLIS_NO_CONTAINER:-}" = 1 ] && exit 0

ENGINE=${PORTCULLIS_ENGINE:-podman}
BASE_IMAGE=${PORTCULLIS_BASE_IMAGE:-localhost/portcullis-base:bookworm-node20}
CACHE=/var/cache/portcullis
MIRROR=${PORTCULLIS_DEBIAN_MIRROR:-http://deb.debian.org/debian}
MARK='# portcullis: written by scripts/container-setup.sh'
# Bump when the base's recipe below changes: an image or tarball of another
# recipe is made again.
RECIPE=2

if [ "$(id -u)" != 0 ]; then
  command -v "$ENGINE" >/dev/null || echo "setup: $ENGINE is not installed; run 'sudo scripts/setup.sh' once for the container test and 'make docker'" >&2
  exit 0
fi

# --- 1. packages ---
APT_PKGS=(debootstrap)
[ "$ENGINE" = podman ] && APT_PKGS+=(podman buildah runc netavark aardvark-dns)
need_apt=()
for p in "${APT_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need_apt+=("$p")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get -o DPkg::Lock::Timeout=900 install -y -qq --no-install-recommends "${need_apt[@]}"
fi

# --- 2. engine configuration ---
if [ "$ENGINE" = podman ]; then
  conf_body() {
    cat <<EOF
$MARK
# (rewritten by it while this line stays; remove the line to keep your own edits).
[containers]
# Root's hard limits here are nofile 20000 / nproc 96365; podman's defaults exceed them.
default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]
[engine]
# crun refuses hybrid cgroups (v1 + v2) on this machine kind; runc works.
runtime = "runc"
[network]
# Container bridges only inside the benchmark range 198.18.0.0/15 (RFC 2544).
default_subnet = "198.18.88.0/24"
default_subnet_pools = [{"base" = "198.18.0.0/16", "size" = 24}]
EOF
  }
  main=/etc/containers/containers.conf
  if [ ! -e "$main" ] || grep -qxF "$MARK" "$main"; then
    target=$main
  else
    target=/etc/containers/containers.conf.d/50-portcullis.conf
  fi
  if ! cmp -s <(conf_body) "$target" 2>/dev/null; then
    echo "setup: writing $target"
    mkdir -p "$(dirname "$target")"
    conf_body >"$target.tmp" && mv "$target.tmp" "$target"
  fi
fi

# --- 3. base image ---
have=$("$ENGINE" image inspect --format '{{index .Config.Labels "org.portcullis.base-recipe"}}' "$BASE_IMAGE" 2>/dev/null || true)
[ "$have" = "$RECIPE" ] && exit 0

if ! command -v node >/dev/null || ! dpkg-query -W -f='${Status}' nodejs 2>/dev/null | grep -q 'install ok installed'; then
  echo "setup: no base image $BASE_IMAGE and no Debian nodejs package to build it from; build docker/Dockerfile with the default BASE (node:20-bookworm-slim) on a machine that reaches a registry" >&2
  exit 0
fi
node_version=$(node -p process.version)
case "$node_version" in v20.*) ;; *) echo "setup: the host's Node is $node_version, the image wants Node 20; base image not built" >&2; exit 0 ;; esac
tarball="$CACHE/base-bookworm-node-$node_version-r$RECIPE.tar"

if [ ! -f "$tarball" ]; then
  echo "setup: building the container base (debootstrap bookworm + the host's Node $node_version); about a minute, once"
  mkdir -p "$CACHE"
  # Tarballs of another Node version or recipe are of no further use.
  find "$CACHE" -maxdepth 1 -name 'base-bookworm-node-*.tar' ! -name "$(basename "$tarball")" -delete
  work=$(mktemp -d "$CACHE/rootfs.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  root="$work/rootfs"
  debootstrap --variant=minbase bookworm "$root" "$MIRROR" >"$work/debootstrap.log" 2>&1 ||
    { tail -20 "$work/debootstrap.log" >&2; echo "setup: debootstrap failed (log above)" >&2; exit 1; }
  # As Debian's own -slim images: no documentation, manuals or translations
  # from later apt installs (the build and runtime stages install packages).
  cat >"$root/etc/dpkg/dpkg.cfg.d/docker-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
EOF
  # ... and no package caches left in a layer after `apt-get update && apt-get install`.
  cat >"$root/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
  echo 'Acquire::Languages "none";' >"$root/etc/apt/apt.conf.d/docker-no-languages"
  echo 'Acquire::GzipIndexes "true";' >"$root/etc/apt/apt.conf.d/docker-gzip-indexes"
  find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete 2>/dev/null || true
  rm -rf "$root/usr/share/man/"* "$root/usr/share/info/"* "$root/usr/share/locale/"* "$root/var/cache/apt/archives/"*.deb "$root/var/cache/apt/"*.bin "$root/var/lib/apt/lists/"*
  cat >"$root/etc/apt/sources.list" <<EOF
deb $MIRROR bookworm main
deb $MIRROR bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
EOF
  # Node: the nodejs package's files (binary, headers, corepack), except its
  # npm, which may have been upgraded in place (npm i -g npm): that one is
  # copied whole as it is on disk, so the base runs the same npm as the host.
  dpkg -L nodejs | grep -v -E '^/usr/lib/node_modules/npm(/|$)|^/usr/share/(doc|man)/' |
    while IFS= read -r f; do if [ -f "$f" ] || [ -L "$f" ]; then printf '%s\n' "${f#/}"; fi; done >"$work/node.list"
  for f in usr/lib/node_modules/npm usr/bin/npm usr/bin/npx; do if [ -e "/$f" ]; then echo "$f"; fi; done >"$work/npm.list"
  tar -C / --no-recursion -cf - -T "$work/node.list" | tar -C "$root" -xf -
  tar -C / -cf - -T "$work/npm.list" | tar -C "$root" -xf -
  env -u NODE_EXTRA_CA_CERTS chroot "$root" node -e 'process.exit(process.versions.node.startsWith("20.") ? 0 : 1)' ||
    { echo "setup: node does not run inside the new root filesystem" >&2; exit 1; }
  tar -C "$root" --numeric-owner -cf "$tarball.tmp" .
  mv "$tarball.tmp" "$tarball"
  rm -rf "$work"
  trap - EXIT
fi

echo "setup: importing $tarball as $BASE_IMAGE"
quiet=(); [ "$ENGINE" = podman ] && quiet=(--quiet)
"$ENGINE" import "${quiet[@]}" --change 'CMD ["node"]' --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' --change "ENV NODE_VERSION=${node_version#v}" --change "LABEL org.portcullis.base-recipe=$RECIPE" \
  --message "debootstrap bookworm minbase + Node $node_version from the host (scripts/container-setup.sh)" \
  "$tarball" "$BASE_IMAGE" >/dev/null
