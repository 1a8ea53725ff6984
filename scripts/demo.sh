#!/usr/bin/env bash
# `make demo` (until the live appliance lands): generate a capture of N
# packets with a realistic mix, then replay it and the shared captures through
# the parser and the flow table and print the summary.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-1000000}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "== generating $n packets (10,000 flows; IPv4/IPv6, TCP/UDP/ICMP, VLAN, fragments) =="
node bin/portcullis.js gen --packets "$n" --flows 10000 "$work/synthetic.pcap"
echo
echo "== replaying the generated capture =="
node bin/portcullis.js replay "$work/synthetic.pcap"
if [ -d ../shared/pcaps ]; then
  echo
  echo "== replaying the $(ls ../shared/pcaps/*.pcap* | grep -cvE '\.(csv|tsv)$') shared captures in ../shared/pcaps =="
  node bin/portcullis.js replay --keep-going $(ls ../shared/pcaps/*.pcap ../shared/pcaps/*.pcapng 2>/dev/null)
else
  echo "(../shared/pcaps not found next to this checkout: skipped the shared captures)"
fi
