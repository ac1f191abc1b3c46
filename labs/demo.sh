#!/bin/sh
# The README's main command (make lab). The lab topologies and their runner
# are not in the tree yet; until they are, the demo shows what exists: the
# binaries build and the example configs of an 8-director ECMP cluster, a
# single director and the VRRP fallback validate.
set -eu
cd "$(dirname "$0")/.."
echo "== anycastd demo: no lab topology exists yet in this tree =="
echo "== the binaries:"
ls -l bin/anycastd bin/anyctl
bin/anyctl version
echo "== the example configs, checked as the daemon would load them:"
bin/anyctl validate configs/examples/*.yaml
echo "== a config with mistakes: every problem, with its path, exit 1:"
if bin/anyctl validate configs/testdata/many-mistakes.yaml; then
	echo "expected the broken config to be rejected" >&2
	exit 1
fi
