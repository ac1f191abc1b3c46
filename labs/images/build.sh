#!/usr/bin/env bash
# Builds the anycastd image and the containerlab lab images (make images).
# Uses docker if its engine answers, else podman, else buildah; BUILDER=
# docker|podman|buildah chooses. Extra arguments go to every build (for
# example --pull=false).
set -euo pipefail
cd "$(dirname "$0")/../.."
version=${VERSION:-$(git describe --always --dirty 2>/dev/null || echo dev)}
if [ -n "${BUILDER:-}" ]; then
	case $BUILDER in
	docker | podman) build=("$BUILDER" build) ;;
	buildah) build=(buildah bud) ;;
	*) echo "BUILDER=$BUILDER: docker, podman or buildah" >&2; exit 1 ;;
	esac
elif docker info >/dev/null 2>&1; then
	build=(docker build)
elif command -v podman >/dev/null; then
	build=(podman build)
elif command -v buildah >/dev/null; then
	build=(buildah bud)
else
	echo "make images needs docker (with its engine running), podman or buildah" >&2
	exit 1
fi
echo "== building with ${build[*]}"
# anycastd first: the lab images start FROM it or copy anyctl out of it.
"${build[@]}" "$@" --build-arg VERSION="$version" -t ghcr.io/anycastd/anycastd:latest .
for img in lab-director lab-host lab-router; do
	"${build[@]}" "$@" -t ghcr.io/anycastd/$img:latest -f labs/images/$img.Dockerfile .
done
echo "== built: ghcr.io/anycastd/{anycastd,lab-director,lab-host,lab-router}:latest"
