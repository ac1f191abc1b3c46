#!/usr/bin/env bash
# The ecmp8 demo for a machine with Docker and containerlab: deploys
# labs/ecmp8.clab.yml from the images of `make images`, shows the members
# and the router's ECMP route, counts 400 client connections per director,
# kills one director's anycastd and shows the route and the count again,
# then destroys the lab (KEEP=1 leaves it up).
#   make images && sudo labs/demo-docker.sh [topology]
set -euo pipefail
cd "$(dirname "$0")/.."
topo=${1:-labs/ecmp8.clab.yml}
vip=198.51.100.10
for c in docker containerlab; do
	command -v "$c" >/dev/null || { echo "$c is not installed" >&2; exit 1; }
done
docker info >/dev/null 2>&1 || { echo "the Docker engine does not answer" >&2; exit 1; }
for img in lab-director lab-host lab-router; do
	docker image inspect ghcr.io/anycastd/$img:latest >/dev/null 2>&1 ||
		{ echo "image ghcr.io/anycastd/$img:latest is missing: run make images" >&2; exit 1; }
done
if [ "${KEEP:-0}" != 1 ]; then
	trap 'echo "== destroying the lab"; containerlab destroy -t "$topo" >/dev/null 2>&1 || true' EXIT
fi

dx() { local n=$1; shift; docker exec "clab-ecmp8-$n" "$@"; }
anyctl() { local i=$1; shift; dx "d$i" anyctl --socket "/var/lib/anycastd-lab/ecmp8/d$i/api.sock" "$@"; }
hops() { dx router ip route show "$vip" | grep -o 'via 10\.0\.[0-9]*\.1' | sed 's/via 10\.0\.\([0-9]*\)\.1/d\1/' | sort -V | tr '\n' ' '; }
wait_for() { # seconds, description, test command...
	local limit=$1 what=$2; shift 2
	local t0=$SECONDS
	until "$@" >/dev/null 2>&1; do
		if (( SECONDS - t0 > limit )); then echo "timed out after ${limit}s waiting for: $what" >&2; exit 1; fi
		sleep 0.2
	done
}
spread() {
	for i in $(seq 1 10); do
		dx "d$i" sh -c "nft delete table inet demo_count 2>/dev/null; nft 'table inet demo_count { chain in { type filter hook prerouting priority -300; policy accept; ip daddr $vip tcp dport 80 tcp flags syn counter; }; }'"
	done
	dx client sh -c "for p in \$(seq 40001 40400); do curl -s -o /dev/null --max-time 0.2 --local-port \$p http://$vip/ & done; wait" || true
	local line=""
	for i in $(seq 1 10); do
		n=$(dx "d$i" nft list table inet demo_count | grep -o 'counter packets [0-9]*' | awk '{print $3}')
		[ "${n:-0}" -gt 0 ] && line+="d$i:$n "
	done
	echo "400 connections from the client, by director: $line"
}

echo "== containerlab deploy -t $topo"
log=$(mktemp)
if ! containerlab deploy -t "$topo" --reconfigure >"$log" 2>&1; then
	cat "$log"; rm -f "$log"; echo "containerlab deploy failed" >&2; exit 1
fi
if grep -q 'Failed to execute command' "$log"; then
	grep -A3 'Failed to execute command' "$log"; rm -f "$log"; echo "a node's exec failed" >&2; exit 1
fi
rm -f "$log"
eight() { [ "$(hops | wc -w)" = 8 ]; }
wait_for 120 "8 next hops at the router" eight
echo "\$ anyctl members   (on d1)"
anyctl 1 members
echo "\$ ip route show $vip   (on the router)"
dx router ip route show "$vip"
spread
echo "(node.dataplane: memory in labs/ecmp8/dN.yaml: the directors count what the router"
echo " sends them; on a kernel with IPVS set dataplane: kernel to balance for real)"

echo "== killing d4's anycastd (kill -9)"
t0=$(date +%s%N)
dx d4 pkill -9 -x anycastd
no_d4() { ! hops | grep -qw d4; }
wait_for 30 "d4 out of the router's route" no_d4
t1=$(date +%s%N)
d10_in() { hops | grep -qw d10 && eight; }
wait_for 30 "the standby d10 in the router's route" d10_in
t2=$(date +%s%N)
echo "d4 left the router's route after $(( (t1 - t0) / 1000000 )) ms; 8 next hops again, with d10, after $(( (t2 - t0) / 1000000 )) ms"
echo "\$ anyctl members   (on d1; it exits 1 while a member is unhealthy)"
anyctl 1 members || true
spread
