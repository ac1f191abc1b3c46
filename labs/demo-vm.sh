#!/usr/bin/env bash
# make lab-vm: the IPVS packet path demo. It
# runs the smallest lab there is: real IPVS in Debian's kernel under
# qemu, a client, two DR directors and three real servers on one bridge,
# and shows what the packets did.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then echo "make lab needs root (network namespaces, qemu)" >&2; exit 1; fi
bash labs/install-deps.sh
export PATH="/usr/local/go/bin:$PATH"

echo "== anycastd $(bin/anyctl version)"
echo "== example configs, checked as the daemon loads them:"
bin/anyctl validate configs/examples/*.yaml
echo
echo "== booting Debian's kernel under qemu (first run downloads it, ~70 MB) and running the DR lab inside..."
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! ANYCASTD_LAB=1 go test ./labs/vmlab -run 'TestLabVM$' -count=1 -v >"$log" 2>&1; then
	tail -60 "$log"
	echo "the VM lab failed" >&2
	exit 1
fi
grep -E "VM: |rr, 99|IPVS counters|mh, 120|via d1 and via d2|reverse order|ESTABLISHED entries|measure:" "$log" | sed -e 's/^ *//' -e 's/^[a-z_]*\.go:[0-9]*: //'
echo
echo "What this shows: IPVS in DR mode takes turns (rr) or hashes (mh) over the"
echo "real servers; the director counts the clients' packets and none of the"
echo "replies (they go straight back from the real servers); two directors with"
echo "the same table send each client to the same real server, which is what"
echo "lets flows survive an ECMP change; a weight change keeps live connections."
echo "Everything ran inside the VM and is gone with it."
