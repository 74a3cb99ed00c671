#!/usr/bin/env bash
# Make the Dockerfile's base image locally when no registry serves it (CI, air-gapped hosts).
#
# Usage: tools/debian_base.sh ENGINE [CACHE_DIR]
#
# The name is the default of `ARG BASE_IMAGE=` in the Dockerfile (e.g. docker.io/library/debian:12.15-slim),
# so the *unmodified* Dockerfile then builds on it: the engine uses a local image of that name instead of
# pulling one. Nothing is done when the engine already has the image or can pull it. Otherwise mmdebstrap
# makes the same kind of root file system as Debian's official `-slim` images (variant minbase, without
# manuals, locales, docs or info pages) from the Debian archive apt already uses on this host, and it is imported under
# that name. The tarball is kept in CACHE_DIR (default /var/cache/pipelinejobs-ci) for 7 days, so later
# runs on the same machine import it in seconds instead of bootstrapping again (~35 s).
set -euo pipefail
engine=${1:?usage: tools/debian_base.sh ENGINE [CACHE_DIR]}
cache=${2:-/var/cache/pipelinejobs-ci}
root=$(cd "$(dirname "$0")/.." && pwd)

name=$(sed -n 's/^ARG BASE_IMAGE=//p' "$root/Dockerfile" | sed -n 1p)
[ -n "$name" ] || { echo "debian_base: no 'ARG BASE_IMAGE=' default in the Dockerfile" >&2; exit 1; }

if "$engine" image inspect "$name" >/dev/null 2>&1; then
  echo "debian_base: $engine already has $name"
  exit 0
fi
if timeout 30 "$engine" pull -q "$name" >/dev/null 2>&1; then
  echo "debian_base: pulled $name"
  exit 0
fi

# The tag names the Debian release: debian:12.15-slim or debian:bookworm-slim -> bookworm.
tag=${name##*:}
case "$tag" in
  12*|bookworm*) suite=bookworm ;;
  13*|trixie*) suite=trixie ;;
  *) echo "debian_base: cannot tell the Debian release of $name; make it by hand (docs/deploying.md)" >&2; exit 1 ;;
esac

# The archive this host's apt uses (deb822 .sources or one-line .list files); deb.debian.org otherwise.
apt_sources() { cat /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list 2>/dev/null || true; }
archive_uri() {  # the first URI that ends in /$1
  apt_sources | sed -n "s|^URIs: *\(http[^ ]*/$1\)/*\$|\1|p; s|^deb \(\[[^]]*\] \)\{0,1\}\(http[^ ]*/$1\)/* .*|\2|p" | sed -n 1p
}
mirror=$(archive_uri debian)
security=$(archive_uri debian-security)
mirror=${mirror:-http://deb.debian.org/debian}
security=${security:-http://deb.debian.org/debian-security}

mkdir -p "$cache"
tarball="$cache/$(printf '%s' "$name" | tr '/:@' '___').tar"
if [ -s "$tarball" ] && [ -n "$(find "$tarball" -mtime -7)" ]; then
  echo "debian_base: reusing $tarball"
else
  echo "debian_base: $name cannot be pulled; bootstrapping Debian $suite from $mirror"
  rm -f "$tarball.part"
  # merged-/usr the way debootstrap (and so the official images) sets it up: with usr-is-merged, not usrmerge + perl;
  # and two of the official images' settings (debuerreotype's docker-apt-speedup and docker-no-languages):
  # dpkg does not fsync every unpacked file, apt fetches no translations
  mmdebstrap --quiet --variant=minbase --format=tar --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
    --dpkgopt='force-unsafe-io' --aptopt='Acquire::Languages "none"' \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/info/*' --dpkgopt='path-exclude=/usr/share/groff/*' \
    --dpkgopt='path-exclude=/usr/share/linda/*' --dpkgopt='path-exclude=/usr/share/lintian/overrides/*' \
    "$suite" "$tarball.part" \
    "deb $mirror $suite main" "deb $mirror $suite-updates main" "deb $security $suite-security main" \
    >"$tarball.log" 2>&1 || { tail -n 40 "$tarball.log" >&2; exit 1; }
  mv "$tarball.part" "$tarball"
fi
"$engine" import -q "$tarball" "$name" >/dev/null
echo "debian_base: imported $name ($(tar -xOf "$tarball" ./etc/debian_version 2>/dev/null || echo '?'))"
