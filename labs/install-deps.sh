#!/usr/bin/env bash
# Installs what the tests and labs need on a Debian machine (root). Used by
# .ci/run and by the demo (make lab); a no-op when everything is there.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
# make, git: the build; gcc, libc6-dev: cgo for the race detector (make unit); iproute2, nftables: namespace labs;
# qemu-system-x86, busybox-static, file: the VM lab with Debian's kernel.
# bird2: the upstream router (and the directors' OSPF) in the routing labs;
# frr: the other upstream router (labs/frr.clab.yml, FRR's zebra, bgpd, bfdd);
# nginx: the real servers of the end-to-end lab; curl: its client;
# ipvsadm: the peer ipvs's VM measurements compare with (keepalived too);
# bind9-dnsutils: dig, the client of the DNS tests; keepalived: the VRRP
# interop lab; buildah, mmdebstrap (and gpg, which checks what it
# fetches): the image test (labs/images) builds the Dockerfiles on a Debian
# base made here, no registry needed.
pkgs=(make gcc libc6-dev git ca-certificates iproute2 nftables qemu-system-x86 busybox-static file bird2 frr nginx curl bind9-dnsutils keepalived ipvsadm buildah mmdebstrap gpg)
missing=()
for p in "${pkgs[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
	echo "installing ${missing[*]}"
	apt-get update -q
	apt-get install -y -q --no-install-recommends "${missing[@]}"
	# The labs start their own BIRDs in namespaces; the package's host
	# daemon is not needed, so do not leave it running where we put it.
	if command -v systemctl >/dev/null; then
		[[ " ${missing[*]} " == *" bird2 "* ]] && { systemctl disable --now bird.service >/dev/null 2>&1 || true; }
		[[ " ${missing[*]} " == *" frr "* ]] && { systemctl disable --now frr.service >/dev/null 2>&1 || true; }
		[[ " ${missing[*]} " == *" nginx "* ]] && { systemctl disable --now nginx.service >/dev/null 2>&1 || true; }
		[[ " ${missing[*]} " == *" keepalived "* ]] && { systemctl disable --now keepalived.service >/dev/null 2>&1 || true; }
	fi
fi
export PATH="/usr/local/go/bin:$PATH"
command -v go >/dev/null || { echo "Go is not installed at /usr/local/go" >&2; exit 1; }
