#!/bin/sh
# `make install-service`: pynet as a systemd service (README, "Install as a system service").
#   - pynet and its dependencies in a venv of their own under PREFIX (/opt/pynet/venv), built
#     from the working tree: a copy, so a later `git pull` changes nothing until the next install;
#   - the unit in UNITDIR (/etc/systemd/system/pynet.service), ExecStart pointing at that venv;
#   - /etc/default/pynet, the settings file, only when there is none (yours are kept).
# With systemd running and no DESTDIR, the unit is also enabled (not started).
# DESTDIR stages everything under another root (packaging, tests); the venv's own paths then
# include DESTDIR, as venvs cannot be moved.
set -eu

REPO=$(cd "$(dirname "$0")/.." && pwd)
DESTDIR=${DESTDIR:-}
PREFIX=${PREFIX:-/opt/pynet}
UNITDIR=${UNITDIR:-/etc/systemd/system}
PYTHON=${PYTHON:-/usr/bin/python3}
VENV=$DESTDIR$PREFIX/venv

say() { echo "pynet-service: $*" >&2; }

# What the service needs from Debian: iptables at run time, and venv support to install.
system_packages() {
    [ -z "$DESTDIR" ] || return 0
    missing=""
    command -v iptables-restore >/dev/null || [ -x /usr/sbin/iptables-restore ] || missing="$missing iptables"
    "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null || missing="$missing python3-venv"
    [ -n "$missing" ] || return 0
    say "installing system packages:$missing"
    apt-get update -qq
    # shellcheck disable=SC2086 # a list of packages
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
}

# pynet from a copy of the working tree (no build/ directory in the repo), deps then pynet
# itself, forced, since the version number does not change with every commit.
install_venv() {
    [ -x "$VENV/bin/python" ] || { say "creating $VENV"; "$PYTHON" -m venv "$VENV"; }
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    # The packages' source folders (pyproject maps pynet.plugin to plugin/, ...).
    folders=$("$VENV/bin/python" -c 'import tomllib, sys; print(" ".join(sorted(set(tomllib.load(open(sys.argv[1], "rb"))["tool"]["setuptools"]["package-dir"].values()))))' "$REPO/pyproject.toml")
    # shellcheck disable=SC2086
    (cd "$REPO" && tar -cf - --exclude=__pycache__ --exclude='*.pyc' pyproject.toml README.md $folders) | (mkdir "$tmp/src" && tar -C "$tmp/src" -xf -)
    pip="$VENV/bin/pip -q --disable-pip-version-check"
    $pip wheel --no-deps -w "$tmp/wheel" "$tmp/src" >"$tmp/log" 2>&1 || { cat "$tmp/log" >&2; exit 1; }
    $pip install "$tmp"/wheel/pynet-*.whl 2>&1 | grep -v '^WARNING: Location' >&2 || true
    $pip install --no-deps --force-reinstall "$tmp"/wheel/pynet-*.whl
    "$VENV/bin/pynet" serve --help >/dev/null || { say "the installed pynet does not run"; exit 1; }
    rm -rf "$tmp"
    trap - EXIT
}

install_files() {
    mkdir -p "$DESTDIR$UNITDIR" "$DESTDIR/etc/default"
    sed "s#/opt/pynet/venv/#$PREFIX/venv/#g" "$REPO/packaging/pynet.service" >"$DESTDIR$UNITDIR/pynet.service"
    chmod 644 "$DESTDIR$UNITDIR/pynet.service"
    if [ -e "$DESTDIR/etc/default/pynet" ]; then
        say "keeping $DESTDIR/etc/default/pynet"
    else
        # 0600: it may hold the etcd password.
        install -m 600 "$REPO/packaging/pynet.default" "$DESTDIR/etc/default/pynet"
    fi
}

enable_unit() {
    if [ -z "$DESTDIR" ] && [ -d /run/systemd/system ]; then
        systemctl daemon-reload
        systemctl enable pynet.service
        say "installed and enabled; start it now with: systemctl start pynet"
    else
        say "installed under ${DESTDIR:-/}; systemd is not managing this root: enable with \`systemctl enable --now pynet\` there"
    fi
}

system_packages
install_venv
install_files
enable_unit
