#!/usr/bin/env bash
# The README's main command (make lab): the ecmp8 lab out of network
# namespaces (client, BIRD router with ECMP over 8 paths, 10 directors
# running anycastd, 4 nginx real servers), `anyctl members`, the spread of
# the client's connections over the directors, one director killed and
# the spread again with the time it took; then everything is torn down.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then echo "make lab needs root (network namespaces)" >&2; exit 1; fi
bash labs/install-deps.sh
export PATH="/usr/local/go/bin:$PATH"
echo "== anycastd $(bin/anyctl version)"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! ANYCASTD_LAB=1 ANYCASTD_DEMO=1 go test ./labs/e2e -run 'TestDemoECMP8$' -count=1 -v >"$log" 2>&1; then
	grep -vE '^\s+\{' "$log" | tail -80
	echo "the demo failed" >&2
	exit 1
fi
grep -vE '^(=== |--- |PASS|ok |\s+\{)' "$log"
left=$(ip netns list | grep -c '^clab-ecmp8-' || true)
echo "== done; namespaces of the lab left behind: $left"
