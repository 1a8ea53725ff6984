#!/usr/bin/env bash
# Installs what portcullis needs on a fresh Debian 12 machine (root), and nothing twice.
# Called by `make`; safe to run again: each step checks before it acts.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PKGS=(libpcap-dev build-essential tshark tcpdump iperf3 hping3 netsniff-ng iproute2 iptables nftables conntrack ethtool curl openssl nginx-light haproxy coturn iputils-ping traceroute redis-server chromium)
STAMP=node_modules/.portcullis-setup

need_apt=()
for p in "${APT_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need_apt+=("$p")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "setup: missing Debian packages: ${need_apt[*]}; run 'sudo scripts/setup.sh' once" >&2; exit 1
  fi
  echo "setup: installing Debian packages: ${need_apt[*]}"
  # tshark asks whether non-root users may capture; answer before it asks.
  echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get -o DPkg::Lock::Timeout=900 install -y -qq --no-install-recommends "${need_apt[@]}"
fi

# npm: reinstall only when the lock file changed since the last install.
if [ ! -f "$STAMP" ] || [ package-lock.json -nt "$STAMP" ] || [ package.json -nt "$STAMP" ]; then
  echo "setup: installing npm packages"
  if [ -f package-lock.json ]; then npm ci --strict-allow-scripts --no-fund --no-audit; else npm install --no-fund --no-audit; fi
  touch "$STAMP"
fi

# Container engine (podman) and the local base image for `make docker` and
# test/e2e/container.test.ts; see that script. PORTCULLIS_NO_CONTAINER=1 skips it.
scripts/container-setup.sh
