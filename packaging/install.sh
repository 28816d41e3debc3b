#!/bin/sh
# Installs what pynet needs, and only what is missing, so that once installed `make run`
# and `make test` work with no network at all.
#   packaging/install.sh run    system packages and venv for the daemon
#   packaging/install.sh test   the same plus what the test tiers and bench need
set -eu
cd "$(dirname "$0")/.."
want=${1:-run}
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}

# docker-registry: the tests run its binary in a lab namespace with their own config (lab/registry.py).
# nftables: `nft`, which the daemon uses instead of iptables where dockerd runs its nftables backend.
pkgs="iptables nftables iproute2 kmod"
[ "$want" = test ] && pkgs="$pkgs docker.io etcd-server etcd-client busybox-static iperf3 util-linux prometheus docker-registry"
"$PYTHON" -c 'import ensurepip, venv' 2>/dev/null || pkgs="$pkgs python3-venv python3-pip"

missing=""
for p in $pkgs; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    echo "pynet: installing system packages:$missing"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

# The venv is rebuilt only when pyproject.toml changed since it was last installed, or when
# the test extras are wanted and only the daemon's packages are there.
stamp="$VENV/.pynet-installed"
sum="$(sha256sum pyproject.toml | cut -c1-16)"
stale=no
[ -x "$VENV/bin/pynet" ] || stale=yes
case "$(cat "$stamp" 2>/dev/null)" in
    "$sum test") ;;
    "$sum run") [ "$want" = test ] && stale=yes ;;
    *) stale=yes ;;
esac
if [ "$stale" = yes ]; then
    echo "pynet: installing the Python environment in $VENV"
    [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
    extras=""
    [ "$want" = test ] && extras="[test]"
    "$VENV/bin/pip" install -q --disable-pip-version-check -e ".$extras" 2>&1 | grep -v "^WARNING: Location" || true
    [ -x "$VENV/bin/pynet" ] || { echo "pynet: pip install failed" >&2; exit 1; }
    echo "$sum $want" > "$stamp"
fi
