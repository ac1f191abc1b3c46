#!/usr/bin/env bash
# make bench: the Go benchmarks (5 runs each) and the labs' measurements
# (each timed scenario repeated ANYCASTD_MEASURE_RUNS times, default 5),
# written to labs/.cache/bench/ and summed up at the end: medians, with
# min and max. Nothing here asserts a time; the numbers are for the README
# and for spotting regressions by eye or with benchstat.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="/usr/local/go/bin:$PATH"
out=labs/.cache/bench
mkdir -p "$out"
runs=${ANYCASTD_MEASURE_RUNS:-5}

echo "== Go benchmarks (-count 5) -> $out/go.txt"
go test -run '^$' -bench . -benchmem -count 5 ./... | tee "$out/go.txt"

if [ "$(id -u)" != 0 ]; then
	echo "== skipping the lab measurements: they need root (network namespaces, qemu)"
	exit 0
fi
bash labs/install-deps.sh
echo "== lab measurements, $runs runs each -> $out/labs.txt"
: >"$out/labs.txt"
status=0
for pkg in ./routing/bgp ./routing/kernel ./labs/clusterlab ./labs/vmlab; do
	if ! ANYCASTD_LAB=1 ANYCASTD_MEASURE_RUNS=$runs go test -count=1 -p 1 -timeout 60m -run 'Lab|Loopback' -v "$pkg" >>"$out/labs.txt" 2>&1; then
		echo "lab $pkg failed; see $out/labs.txt" >&2
		status=1
	fi
done
echo
echo "== measurement report"
grep -h 'measure:' "$out/labs.txt" | sed -e 's/^ *//' -e 's/^[a-z_]*\.go:[0-9]*: measure: //' | tee "$out/report.txt"
exit $status
