#!/usr/bin/env bash
# make bench: the Go benchmarks (5 runs each) and the labs' measurements,
# written to labs/.cache/bench/ and summed up in docs/benchmarks.md:
# medians with their range. The routing labs repeat each timed event
# ANYCASTD_MEASURE_RUNS times (default 5) inside one run; the cluster,
# end-to-end and VM labs are run that many times. Nothing here asserts a
# time; the numbers are for the README and for spotting regressions.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="/usr/local/go/bin:$PATH"
out=labs/.cache/bench
mkdir -p "$out"
runs=${ANYCASTD_MEASURE_RUNS:-5}

# The long soak: the whole tier on the real kernel under faults, BGP, for
# SOAK_LONG (default 30m) of seed SOAK_LONG_SEED, with 120 long flows.
# BENCH=soak runs only it and replaces only its section of
# docs/benchmarks.md.
soak() {
	echo "   the long soak (${SOAK_LONG:-30m}, seed ${SOAK_LONG_SEED:-7}) -> $out/soak.txt"
	if ! SOAK_SEED=${SOAK_LONG_SEED:-7} SOAK_DURATION=${SOAK_LONG:-30m} SOAK_ROUTING=bgp SOAK_FLOWS=120 ANYCASTD_LAB=1 \
		go test -count=1 -timeout 0 -run '^TestLabSoak$' -v ./labs/soak >"$out/soak.txt" 2>&1; then
		echo "the long soak failed; see $out/soak.txt" >&2
		return 1
	fi
}
if [ "${BENCH:-}" = soak ]; then
	[ "$(id -u)" = 0 ] || { echo "the soak needs root (qemu)"; exit 1; }
	bash labs/install-deps.sh
	status=0
	soak || status=1
	go run ./labs/benchreport -soak "$out/soak.txt" -update docs/benchmarks.md >"$out/benchmarks.md"
	mv "$out/benchmarks.md" docs/benchmarks.md
	exit $status
fi

echo "== Go benchmarks (-count $runs) -> $out/go.txt"
go test -run '^$' -bench . -benchmem -count "$runs" ./... | tee "$out/go.txt"

if [ "$(id -u)" != 0 ]; then
	echo "== skipping the lab measurements: they need root (network namespaces, qemu)"
	go run ./labs/benchreport -go "$out/go.txt" -runs "$runs" >docs/benchmarks.md
	exit 0
fi
bash labs/install-deps.sh
echo "== lab measurements -> $out/labs.txt"
: >"$out/labs.txt"
status=0
lab() { # lab PACKAGE COUNT MEASURE_RUNS
	echo "   $1 (runs: $2, repetitions inside: $3)"
	if ! ANYCASTD_LAB=1 ANYCASTD_MEASURE_RUNS=$3 go test -count="$2" -p 1 -timeout 90m -run 'Lab|Loopback' -v "$1" >>"$out/labs.txt" 2>&1; then
		echo "lab $1 failed; see $out/labs.txt" >&2
		status=1
	fi
}
lab ./routing/bgp 1 "$runs"
lab ./routing/kernel 1 "$runs"
lab ./routing/vrrp "$runs" 1
lab ./labs/clusterlab "$runs" 1
lab ./labs/e2e "$runs" 1
# The churn table is measured once, with 3,000 flows per row, in a boot
# of its own; the runs of the other VM measurements skip it.
export ANYCASTD_CHURN_FLOWS=0
lab ./labs/vmlab "$runs" 1
echo "   the churn table (3,000 flows per row, one run)"
if ! ANYCASTD_CHURN_FLOWS=3000 ANYCASTD_LAB=1 ANYCASTD_VM_ONLY=vmlab ANYCASTD_VM_RUN='^TestVMChurnTable$' \
	go test -count=1 -timeout 90m -run '^TestLabVM$' -v ./labs/vmlab >>"$out/labs.txt" 2>&1; then
	echo "the churn table failed; see $out/labs.txt" >&2
	status=1
fi
unset ANYCASTD_CHURN_FLOWS
soak || status=1
go run ./labs/benchreport -go "$out/go.txt" -labs "$out/labs.txt" -soak "$out/soak.txt" -runs "$runs" >docs/benchmarks.md
echo
echo "== docs/benchmarks.md"
cat docs/benchmarks.md
exit $status
