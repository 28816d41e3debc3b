#!/bin/sh
# Installs the built plugin directory (build.sh) into a dockerd as the managed plugin
# pynet:latest and enables it. The dockerd is the one DOCKER_HOST names (default: local).
#
#   packaging/plugin/create.sh [DIR]
#
# An existing pynet:latest is replaced (disable, rm, create, enable) and its `docker plugin set`
# values are carried over, so this is also the upgrade path: a managed plugin built locally has
# no registry for `docker plugin upgrade` to pull from. While networks use the plugin, Docker
# refuses to disable it: FORCE=1 disables it anyway. Running containers keep their traffic
# (their links and rules are kernel objects), and networks keep working because pynet's state
# lives in the state mount (/var/lib/pynet), not in the plugin.
#
# Environment:
#   PLUGIN_NAME   plugin reference (pynet; Docker adds :latest)
#   PLUGIN_SET    settings applied before enable, space-separated KEY=VALUE, e.g.
#                 "PYNET_ETCD_ENDPOINTS=http://10.0.0.10:2379 state.source=/srv/pynet"
#   FORCE=1       replace the plugin even while networks use it
#   PREPARE_HOST  1 (default when the dockerd is local): create the state directory the state
#                 mount needs; 0 leaves the machine alone
set -eu

DIR=${1:-${PLUGIN_DIR:-${PYNET_PLUGIN_CACHE:-/var/cache/pynet-plugin}/plugin}}
NAME=${PLUGIN_NAME:-pynet}
case "$NAME" in *:*) REF=$NAME ;; *) REF=$NAME:latest ;; esac
PLUGIN_SET=${PLUGIN_SET:-}
FORCE=${FORCE:-0}

say() { echo "pynet-plugin: $*" >&2; }
die() { say "$*"; exit 1; }

is_local() {
    case "${DOCKER_HOST:-unix://}" in unix://*) return 0 ;; *) return 1 ;; esac
}

# The `docker plugin set` arguments that reproduce the current plugin's settings: PYNET_* env
# values and mount sources (everything a user can set; PATH and the like are not settable).
# {{.Source}} is a *string: printed directly the template dereferences it, through println
# it would print the pointer.
# Mount sources come from .Config.Mounts, the ones the plugin runs with: `docker plugin set`
# writes there, and .Settings.Mounts is a copy that stops following it once dockerd restarted
# (docs/protocol.md, 5.2).
saved_settings() {
    docker plugin inspect -f '{{range .Settings.Env}}{{println .}}{{end}}' "$REF" | grep '^PYNET_' || true
    docker plugin inspect -f '{{range .Config.Mounts}}{{if .Name}}{{.Name}}.source={{.Source}}{{"\n"}}{{end}}{{end}}' "$REF" |
        grep -v '^$' || true
}

# Networks whose driver or IPAM driver is the plugin. Docker's own in-use check (a reference
# count) is lost when the plugin is force-disabled or dockerd restarts, so it is not enough.
networks_using() {
    ids=$(docker network ls -q)
    [ -n "$ids" ] || return 0
    # shellcheck disable=SC2086
    docker network inspect -f '{{.Name}} {{.Driver}} {{.IPAM.Driver}}' $ids | awk -v ref="$REF" '$2 == ref || $3 == ref {print $1}'
}

remove_existing() {
    docker plugin inspect "$REF" >/dev/null 2>&1 || return 0
    saved=$(saved_settings)
    users=$(networks_using | tr '\n' ' ')
    if [ -n "$users" ] && [ "$FORCE" != 1 ]; then
        die "networks use $REF ($users): \`make plugin FORCE=1\` replaces it anyway (their containers keep working)"
    fi
    say "replacing the existing $REF (its settings are kept)"
    if [ "$(docker plugin inspect -f '{{.Enabled}}' "$REF")" = true ]; then
        docker plugin disable -f "$REF" >/dev/null
    fi
    docker plugin rm -f "$REF" >/dev/null
}

# The state directory the state mount's source must be: runc refuses to bind a missing source.
# (The other mount is the host's /run, which every host has.) Made 0700, as pynet makes it: it
# holds the store and, for etcd, the password file and TLS key; an existing one keeps its mode.
prepare_host() {
    state=/var/lib/pynet
    # shellcheck disable=SC2086 # PLUGIN_SET wins over the saved settings, as in main
    for kv in ${saved:-} $PLUGIN_SET; do
        case "$kv" in state.source=*) state=${kv#state.source=} ;; esac
    done
    [ -d "$state" ] || mkdir -p -m 700 "$state"
}

main() {
    if [ ! -f "$DIR/config.json" ] || [ ! -d "$DIR/rootfs" ]; then
        die "$DIR has no config.json and rootfs/: run packaging/plugin/build.sh"
    fi
    saved=
    remove_existing
    if [ "${PREPARE_HOST:-$(is_local && echo 1 || echo 0)}" = 1 ]; then prepare_host; fi
    say "creating $REF from $DIR"
    docker plugin create "$REF" "$DIR" >/dev/null
    # Saved values one a line (they may hold spaces), then PLUGIN_SET, space-separated.
    printf '%s\n' "$saved" | while IFS= read -r kv; do
        [ -z "$kv" ] || docker plugin set "$REF" "$kv"
    done
    # shellcheck disable=SC2086
    for kv in $PLUGIN_SET; do docker plugin set "$REF" "$kv"; done
    docker plugin enable "$REF" >/dev/null || die "enabling $REF failed: dockerd's log has the plugin's output"
    say "enabled: docker network create -d $REF --ipam-driver $REF ..."
}

main
