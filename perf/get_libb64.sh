#!/bin/sh
# Puts libb64.so.0d (needed by the perf_analyzer binary of the tritonclient wheel) into the folder $1.
# Order: $LIBB64 (a path you give), the system's copy (ldconfig), Debian/Ubuntu's libb64-0d package
# fetched with `apt-get download` and unpacked without root. perf_analyzer finds it via LD_LIBRARY_PATH.
set -eu
dest=${1:?usage: get_libb64.sh DEST_DIR}
mkdir -p "$dest"
if [ -n "${LIBB64:-}" ]; then
    cp "$LIBB64" "$dest/libb64.so.0d"
    exit 0
fi
system=$(ldconfig -p 2>/dev/null | awk '/libb64\.so\.0d /{print $NF; exit}')
if [ -n "$system" ]; then
    cp -L "$system" "$dest/libb64.so.0d"
    exit 0
fi
if command -v apt-get >/dev/null 2>&1 && command -v dpkg-deb >/dev/null 2>&1; then
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    (cd "$tmp" && apt-get download libb64-0d >/dev/null 2>&1) || true
    deb=$(ls "$tmp"/libb64-0d_*.deb 2>/dev/null | head -n 1)
    if [ -n "$deb" ]; then
        dpkg-deb -x "$deb" "$tmp/root"
        cp -L "$(find "$tmp/root" -name 'libb64.so.0d' | head -n 1)" "$dest/libb64.so.0d"
        exit 0
    fi
fi
echo "error: no libb64.so.0d: install your distribution's libb64 (Debian/Ubuntu: libb64-0d, Fedora: libb64)" \
     "or pass LIBB64=/path/to/libb64.so.0d" >&2
exit 1
