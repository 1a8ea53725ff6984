#!/usr/bin/env bash
# Runs every test with tap and ends with one line `N passed, N failed`
# (tap's assertion counts); exits non-zero on any failure.
set -u
cd "$(dirname "$0")/.."
out=$(mktemp)
node_modules/.bin/tap --reporter=tap "$@" 2>&1 | tee "$out"; rc=${PIPESTATUS[0]}
sum=$(grep -E '^# \{ total: [0-9]+' "$out" | tail -1)
pass=$(sed -nE 's/.*[{ ,]pass: ([0-9]+).*/\1/p' <<<"$sum"); fail=$(sed -nE 's/.*[{ ,]fail: ([0-9]+).*/\1/p' <<<"$sum")
skip=$(sed -nE 's/.*[{ ,]skip: ([0-9]+).*/\1/p' <<<"$sum")
rm -f "$out"
[ -n "$skip" ] && [ "$skip" != 0 ] && echo "note: $skip skipped (a skip is not a pass; reasons are printed above as '# SKIP')"
echo "${pass:-0} passed, ${fail:-0} failed"
# No summary line means tap found or ran nothing: that is a failure too.
[ -z "$sum" ] && exit 1
exit "$rc"
