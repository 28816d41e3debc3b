# pynet: `make run` runs the daemon on the embedded store, `make test` runs every test tier.
VENV ?= .venv
PY := $(VENV)/bin/python
ARGS ?=

.PHONY: install run lint test test-fast bench lab-up lab-down lab-status clean
HOSTS ?= 2
LAB ?= pnlab

install:
	packaging/install.sh test

run:
	@packaging/install.sh run
	$(VENV)/bin/pynet serve $(ARGS)

# ruff and mypy --strict over the product code (tests/, bench/ and lab/ are not under the gate).
# mypy cannot follow the editable install's import hook (package-dir maps pynet.plugin to
# plugin/), so it reads the product through a tree of symlinks, build/lint/pynet/<room>, and
# names files as pynet/<room>/... .
PRODUCT := plugin drivers ipam store
lint:
	@packaging/install.sh test
	$(VENV)/bin/ruff check $(PRODUCT)
	@mkdir -p build/lint/pynet && for d in $(PRODUCT); do ln -sfn ../../../$$d build/lint/pynet/$$d; done
	cd build/lint && $(abspath $(VENV))/bin/mypy --config-file $(CURDIR)/pyproject.toml -p pynet

test:
	@packaging/install.sh test
	$(PY) -m pytest $(ARGS)

# Only the tiers that need neither root nor Docker.
test-fast:
	@packaging/install.sh test
	$(PY) -m pytest -m "not kernel and not faults and not docker and not multihost" $(ARGS)

bench:
	@packaging/install.sh test
	$(PY) -m bench $(ARGS)

# N Docker hosts on this machine, each with its own dockerd and pynet, plus etcd.
lab-up:
	@packaging/install.sh test
	$(PY) -m lab up --hosts $(HOSTS) --name $(LAB)

lab-down:
	$(PY) -m lab down --name $(LAB)

lab-status:
	$(PY) -m lab status --name $(LAB)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache build/lint

# The managed plugin (README, "Install as a managed Docker plugin"). plugin-rootfs builds
# config.json + rootfs/ in PLUGIN_DIR with debootstrap, no registry (the base is cached in
# PLUGIN_CACHE, so a rebuild after a code change takes seconds); plugin then (re)creates
# pynet:latest in the dockerd DOCKER_HOST names and enables it, keeping its `docker plugin
# set` values. PLUGIN_SET="KEY=VALUE ..." sets more before enabling; FORCE=1 replaces a
# plugin that networks use. plugin-push builds, then pushes REGISTRY/pynet:VERSION (README,
# "Install from a registry"); VERSION (default: pyproject.toml's) is the version the wheel in
# the rootfs is built with, so the tag names the pynet inside.
PLUGIN_CACHE ?= /var/cache/pynet-plugin
PLUGIN_DIR ?= $(PLUGIN_CACHE)/plugin
PLUGIN_SET ?=
FORCE ?= 0
REGISTRY ?=
VERSION ?=
.PHONY: plugin plugin-rootfs plugin-push install-service

plugin-rootfs:
	@packaging/install.sh run
	VERSION="$(VERSION)" PYNET_PLUGIN_CACHE=$(PLUGIN_CACHE) packaging/plugin/build.sh $(PLUGIN_DIR)

plugin: plugin-rootfs
	PLUGIN_SET="$(PLUGIN_SET)" FORCE=$(FORCE) packaging/plugin/create.sh $(PLUGIN_DIR)

# The check comes before the build, which takes minutes on a machine that never built one.
plugin-push:
	@[ -n "$(REGISTRY)" ] || { echo "pynet-plugin: REGISTRY is empty: make plugin-push REGISTRY=host:port" >&2; exit 2; }
	@$(MAKE) --no-print-directory plugin-rootfs
	REGISTRY="$(REGISTRY)" packaging/plugin/push.sh $(PLUGIN_DIR)

# pynet as a systemd service (README, "Install as a system service"): a venv in PREFIX, the
# unit, /etc/default/pynet if missing; DESTDIR stages it under another root.
DESTDIR ?=
PREFIX ?= /opt/pynet
install-service:
	DESTDIR=$(DESTDIR) PREFIX=$(PREFIX) packaging/install-service.sh
