#!/usr/bin/env bash
# `make demo`: the live appliance between namespaces it creates (a client, the
# appliance with NAPT, an nginx + iperf3 server), real traffic through it and
# its live statistics; then the offline replay of the shared captures.
# DURATION (seconds of live traffic) defaults to 20.
set -euo pipefail
cd "$(dirname "$0")/.."
node bin/portcullis.js demo --duration "${DURATION:-20}"
if [ -d ../shared/pcaps ]; then
  echo
  echo "== offline: replaying the shared captures in ../shared/pcaps through the parser and the flow table =="
  node bin/portcullis.js replay --keep-going --no-progress $(ls ../shared/pcaps/*.pcap ../shared/pcaps/*.pcapng 2>/dev/null) || true
fi
