#!/bin/sh
# Builds the managed plugin's directory, config.json plus rootfs/, with no container registry:
# a Debian base made by debootstrap, and a venv in it holding pynet and its dependencies.
#
#   packaging/plugin/build.sh [DIR]     DIR defaults to $PYNET_PLUGIN_CACHE/plugin
#
# Three layers, each rebuilt only when its input changed, so a code change costs seconds:
#   1. the base (debootstrap --variant=minbase + python3, iptables, nftables ...), kept as a tarball in
#      the cache: built once per machine (minutes), reused by every checkout and CI run;
#   2. the venv with pynet's dependencies (pyproject.toml's list), from wheels that the
#      build machine's pip downloads for the rootfs's Python into the cache;
#   3. pynet itself, a wheel of the working tree (`pip wheel --no-deps`), reinstalled when a
#      source file or the version changed.
# What went into a rootfs is written to its /opt/pynet/build-info; its version= line is the
# tag `make plugin-push` pushes the plugin under (packaging/plugin/push.sh).
#
# Settings (environment): VERSION (pyproject.toml's version: the wheel is built with this one
# instead, so that pynet reports it; a canonical PEP 440 version such as 0.2.0, 0.2.0rc1 or
# 0.2.0.dev3, which is also a valid Docker tag), PYNET_PLUGIN_CACHE (/var/cache/pynet-plugin),
# SUITE (bookworm), MIRROR (http://deb.debian.org/debian), PIP (the repo's .venv pip, else
# `python3 -m pip`).
set -eu

REPO=$(cd "$(dirname "$0")/../.." && pwd)
CACHE=${PYNET_PLUGIN_CACHE:-/var/cache/pynet-plugin}
OUT=${1:-${PLUGIN_DIR:-$CACHE/plugin}}
SUITE=${SUITE:-bookworm}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
# iproute2 is not needed by pynet (pyroute2 speaks netlink) but makes `runc exec ... ip` debugging possible.
# nftables: `nft`, for hosts whose dockerd runs its nftables firewall backend (drivers/nftables.py).
PACKAGES=python3,python3-venv,iptables,nftables,iproute2,ca-certificates
# Bump when the way the base is made changes, so caches built the old way are not reused.
BASE_RECIPE=1
# Bump when the venv layer changes the same way.
DEPS_RECIPE=2
VENV=/opt/pynet/venv
ROOTFS=$OUT/rootfs
INFO=$ROOTFS/opt/pynet/build-info

say() { echo "pynet-plugin: $*" >&2; }
die() { say "$*"; exit 1; }

# The version the wheel gets: VERSION, else pyproject.toml's. Canonical PEP 440 (no epoch, no
# local part) so that pip keeps it as written and it is a Docker tag too ([A-Za-z0-9_.-]).
PEP440='^[0-9]+(\.[0-9]+)*((a|b|rc)[0-9]+)?(\.post[0-9]+)?(\.dev[0-9]+)?$'
VERSION=${VERSION:-$(sed -n 's/^version = "\(.*\)"$/\1/p' "$REPO/pyproject.toml")}
echo "$VERSION" | grep -Eq "$PEP440" ||
    die "VERSION=$VERSION is not a canonical PEP 440 version (such as 0.2.0, 0.2.0rc1, 0.2.0.post1, 0.2.0.dev3)"
hash_of() { printf '%s' "$*" | sha256sum | cut -c1-16; }
info_get() { sed -n "s/^$1=//p" "$INFO" 2>/dev/null; }
in_root() { chroot "$ROOTFS" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 "$@"; }

# Run a command with its output kept aside, shown only if it fails.
quietly() {
    log=$CACHE/last-command.log
    "$@" >"$log" 2>&1 || { cat "$log" >&2; die "failed: $*"; }
}

pip_host() {
    if [ -n "${PIP:-}" ]; then $PIP "$@"
    elif [ -x "$REPO/.venv/bin/pip" ]; then "$REPO/.venv/bin/pip" "$@"
    else python3 -m pip "$@"
    fi
}

need_tools() {
    [ "$(id -u)" = 0 ] || die "must run as root (debootstrap and chroot)"
    command -v debootstrap >/dev/null && return
    say "installing debootstrap"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
}

# Unmount whatever a failed debootstrap left mounted under $1, deepest first; never anything else.
umount_under() {
    awk -v d="$1" '$5 == d || index($5, d "/") == 1 {print $5}' /proc/self/mountinfo | sort -r |
        while read -r m; do umount -l "$m" || true; done
}

# Layer 1: the debootstrapped base as a tarball in the cache; prints its path.
base_tarball() {
    key=$(hash_of "$SUITE $PACKAGES $BASE_RECIPE $(uname -m)")
    tarball=$CACHE/base-$SUITE-$key.tar
    if [ ! -f "$tarball" ]; then
        need_tools
        say "building the $SUITE base with debootstrap (once per machine; a few minutes)"
        tmp=$(mktemp -d "$CACHE/debootstrap.XXXXXX")
        trap 'umount_under "$tmp"; rm -rf "$tmp" "$tarball.part"' EXIT
        debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$tmp" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 ||
            die "debootstrap failed; see $CACHE/debootstrap.log (tail: $(tail -3 "$CACHE/debootstrap.log"))"
        umount_under "$tmp"
        slim "$tmp"
        tar -C "$tmp" --numeric-owner -cf "$tarball.part" .
        mv "$tarball.part" "$tarball"
        rm -rf "$tmp"
        trap - EXIT
    fi
    echo "$tarball"
}

# What a plugin never uses: apt's lists and caches, documentation, man pages, translations.
slim() {
    rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin "$1"/var/cache/apt/archives/*.deb \
        "$1"/usr/share/doc/* "$1"/usr/share/man/* "$1"/usr/share/info/* "$1"/usr/share/locale/* \
        "$1"/var/log/*.log "$1"/var/log/apt/* "$1"/var/cache/debconf/*-old
}

# Unpack the base into rootfs/ unless the one there came from the same tarball.
unpack_base() {
    tarball=$1
    if [ "$(info_get base)" = "$(basename "$tarball")" ]; then return; fi
    say "unpacking $(basename "$tarball") into $ROOTFS"
    rm -rf "$ROOTFS"
    mkdir -p "$ROOTFS"
    tar -C "$ROOTFS" --numeric-owner -xf "$tarball"
    mkdir -p "$ROOTFS/opt/pynet"
    echo "base=$(basename "$tarball")" >"$INFO"
}

# pyproject.toml read by the rootfs's own Python (tomllib): prints "deps", "build" (the
# build-system requirements) or "folders" (the packages' source folders), one a line.
pyproject() {
    cp "$REPO/pyproject.toml" "$ROOTFS/tmp/pyproject.toml"
    in_root python3 -c '
import sys, tomllib
p = tomllib.load(open("/tmp/pyproject.toml", "rb"))
items = {
    "deps": lambda: p["project"]["dependencies"],
    "build": lambda: p["build-system"]["requires"],
    # The folders the packages come from (pyproject maps pynet.plugin to plugin/, ...).
    "folders": lambda: sorted(set(p["tool"]["setuptools"]["package-dir"].values())),
}[sys.argv[1]]()
print("\n".join(items))' "$1"
    rm -f "$ROOTFS/tmp/pyproject.toml"
}

# Layer 2: a venv with pynet's dependencies, from wheels for the rootfs's Python and libc.
install_deps() {
    # "3.11 cp311 TAG...": every manylinux tag the rootfs's libc runs (pip does not expand
    # manylinux_2_X to the older tags itself, and wheels carry those).
    tags=$(in_root python3 -c '
import platform, sys
major, minor = (int(x) for x in platform.libc_ver()[1].split(".")[:2])
arch = platform.machine()
legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
plats = [f"manylinux_{major}_{m}_{arch}" for m in range(minor, 4, -1)]
plats += [f"{legacy[m]}_{arch}" for m in legacy if m <= minor]
v = sys.version_info
print(f"{v[0]}.{v[1]} cp{v[0]}{v[1]}", *plats)')
    deps=$(pyproject deps)
    key=$(hash_of "$tags $deps $DEPS_RECIPE")
    if [ "$(info_get deps)" = "$key" ] && [ -x "$ROOTFS$VENV/bin/python" ]; then return; fi
    # shellcheck disable=SC2086 # split into its words on purpose
    set -- $tags
    pyver=$1 abi=$2
    shift 2
    platforms=$(for p in "$@"; do printf ' --platform %s' "$p"; done)
    say "installing dependencies for Python $pyver (glibc tag $1)"
    [ -x "$ROOTFS$VENV/bin/python" ] || in_root python3 -m venv "$VENV"
    mkdir -p "$CACHE/wheels"
    # The build requirements too, so that building pynet's wheel later needs no index.
    { echo "$deps"; pyproject build; } >"$CACHE/requirements.txt"
    # shellcheck disable=SC2086 # $platforms is a list of options
    quietly pip_host download -q --disable-pip-version-check -d "$CACHE/wheels" --only-binary=:all: \
        --python-version "$pyver" --implementation cp --abi "$abi" --abi abi3 --abi none $platforms \
        -r "$CACHE/requirements.txt"
    copy_wheels
    echo "$deps" >"$ROOTFS/tmp/pynet-wheels/requirements.txt"
    in_root "$VENV/bin/pip" install -q --disable-pip-version-check --no-cache-dir --no-index \
        --find-links /tmp/pynet-wheels -r /tmp/pynet-wheels/requirements.txt
    rm -rf "$ROOTFS/tmp/pynet-wheels"
    sed -i '/^deps=/d; /^source=/d' "$INFO"
    echo "deps=$key" >>"$INFO"
}

copy_wheels() {
    rm -rf "$ROOTFS/tmp/pynet-wheels"
    mkdir -p "$ROOTFS/tmp/pynet-wheels"
    cp "$CACHE"/wheels/*.whl "$ROOTFS/tmp/pynet-wheels/"
}

# Hash of the files that make up the wheel: pyproject.toml and every file of its packages.
source_hash() {
    folders=$(pyproject folders)
    # shellcheck disable=SC2086
    (cd "$REPO" && find pyproject.toml $folders -type f ! -name '*.pyc' ! -path '*/__pycache__/*' |
        LC_ALL=C sort | xargs sha256sum | sha256sum | cut -c1-16)
}

# Layer 3: pynet itself, built from a copy of the working tree so the repo gets no build/ dir.
install_pynet() {
    key=$(hash_of "$(source_hash) $VERSION")
    if [ "$(info_get source)" = "$key" ]; then say "pynet $VERSION unchanged since the last build"; return; fi
    say "installing pynet $VERSION from $REPO"
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    mkdir "$tmp/src" "$tmp/wheel"
    # shellcheck disable=SC2046
    (cd "$REPO" && tar -cf - --exclude=__pycache__ --exclude='*.pyc' pyproject.toml README.md $(pyproject folders)) |
        tar -C "$tmp/src" -xf -
    sed -i "s/^version = \".*\"$/version = \"$VERSION\"/" "$tmp/src/pyproject.toml"
    grep -q "^version = \"$VERSION\"$" "$tmp/src/pyproject.toml" || die "could not set the version in pyproject.toml"
    # Offline from the cache's wheels when it can (a code change then needs no network), else
    # from the index (a cache whose wheels were removed).
    pip_host wheel -q --disable-pip-version-check --no-deps --no-index --find-links "$CACHE/wheels" \
        -w "$tmp/wheel" "$tmp/src" >/dev/null 2>&1 ||
        quietly pip_host wheel -q --disable-pip-version-check --no-deps -w "$tmp/wheel" "$tmp/src"
    mkdir -p "$ROOTFS/tmp/pynet-wheels"
    cp "$tmp"/wheel/pynet-*.whl "$ROOTFS/tmp/pynet-wheels/"
    in_root sh -c "$VENV/bin/pip install -q --disable-pip-version-check --no-cache-dir --no-deps --force-reinstall /tmp/pynet-wheels/pynet-*.whl"
    rm -rf "$ROOTFS/tmp/pynet-wheels" "$tmp"
    trap - EXIT
    sed -i '/^source=/d; /^version=/d; /^built=/d' "$INFO"
    printf 'source=%s\nversion=%s\nbuilt=%s\n' "$key" "$VERSION" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" >>"$INFO"
}

# What the plugin runtime needs in the rootfs: mount points, and nothing of the build machine
# (debootstrap copied its resolv.conf and hostname; Docker mounts the host's resolv.conf and
# hosts into a plugin with host networking).
finish() {
    mkdir -p "$ROOTFS/run/docker/plugins" "$ROOTFS/var/lib/pynet"
    mkdir -p "$ROOTFS/host/run"
    : >"$ROOTFS/etc/resolv.conf"
    echo pynet >"$ROOTFS/etc/hostname"
    in_root "$VENV/bin/python" -c 'import pynet.plugin.cli, pynet.drivers.bridge, pynet.store.embedded' ||
        die "the rootfs's pynet does not import"
    built=$(in_root "$VENV/bin/pynet" --version)
    [ "$built" = "pynet $VERSION" ] || die "the rootfs's pynet says \"$built\", not pynet $VERSION"
    cp "$REPO/config.json" "$OUT/config.json"
}

main() {
    start=$(date +%s)
    mkdir -p "$CACHE" "$OUT"
    exec 9>"$CACHE/.lock"
    flock 9  # one build at a time per cache: two checkouts may share it
    tarball=$(base_tarball)
    unpack_base "$tarball"
    install_deps
    install_pynet
    finish
    say "ready: $OUT ($(du -sh "$ROOTFS" | cut -f1), $(($(date +%s) - start)) s)"
}

main
