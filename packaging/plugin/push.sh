#!/bin/sh
# Pushes the built plugin directory (build.sh) to a registry as REGISTRY/pynet:VERSION, VERSION
# being the one the rootfs was built with (its /opt/pynet/build-info; build.sh's VERSION, else
# pyproject.toml's), so the tag always names the pynet inside. The dockerd DOCKER_HOST names
# (default: local) does the push: the plugin is created there under that name, pushed, and
# removed again, so that dockerd keeps nothing of it.
#
#   REGISTRY=host:port[/path] packaging/plugin/push.sh [DIR]
#
# A plain-HTTP registry must be among that dockerd's insecure registries (daemon.json
# "insecure-registries", or dockerd --insecure-registry); loopback ones are by default.
#
# Environment:
#   REGISTRY      where to push: host[:port] and an optional path (registry.example.com:5000/net)
#   PLUGIN_REPO   the repository's last component (pynet)
set -eu

DIR=${1:-${PLUGIN_DIR:-${PYNET_PLUGIN_CACHE:-/var/cache/pynet-plugin}/plugin}}
REGISTRY=${REGISTRY:-}
REPO_NAME=${PLUGIN_REPO:-pynet}

say() { echo "pynet-plugin: $*" >&2; }
die() { say "$*"; exit 1; }

# What Docker's reference grammar takes as a domain, an optional port and path components.
COMPONENT='[a-z0-9]+([._-][a-z0-9]+)*'
DOMAIN='[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?(:[0-9]+)?'

main() {
    [ -n "$REGISTRY" ] || die "REGISTRY is empty: \`make plugin-push REGISTRY=host:port\`"
    echo "$REGISTRY" | grep -Eq "^$DOMAIN(/$COMPONENT)*$" ||
        die "REGISTRY=$REGISTRY is not host[:port][/path] (lower-case path components)"
    echo "$REPO_NAME" | grep -Eq "^$COMPONENT$" || die "PLUGIN_REPO=$REPO_NAME is not a repository name"
    info=$DIR/rootfs/opt/pynet/build-info
    if [ ! -f "$DIR/config.json" ] || [ ! -f "$info" ]; then
        die "$DIR has no config.json and rootfs/: run packaging/plugin/build.sh"
    fi
    version=$(sed -n 's/^version=//p' "$info")
    [ -n "$version" ] || die "$info names no version: rebuild with packaging/plugin/build.sh"
    ref=$REGISTRY/$REPO_NAME:$version
    # A plugin of that name here is someone's (installed from the registry, say): not ours to
    # replace, and Docker would refuse to create a second one.
    if docker plugin inspect "$ref" >/dev/null 2>&1; then
        die "this dockerd already has a plugin named $ref: push from another dockerd, or with another VERSION"
    fi
    say "creating $ref from $DIR"
    trap 'docker plugin rm -f "$ref" >/dev/null 2>&1 || true' EXIT
    docker plugin create "$ref" "$DIR" >/dev/null
    say "pushing $ref"
    if ! out=$(docker plugin push "$ref" 2>&1); then
        echo "$out" >&2
        case "$out" in
            *"HTTP response to HTTPS client"*)
                die "$REGISTRY speaks plain HTTP: add it to dockerd's \"insecure-registries\" (daemon.json) and restart dockerd" ;;
        esac
        die "pushing $ref failed"
    fi
    say "pushed: docker plugin install --grant-all-permissions --alias pynet $ref"
    echo "$ref"
}

main
