# pynet: `make run` runs the daemon on the embedded store, `make test` runs every test tier.
VENV ?= .venv
PY := $(VENV)/bin/python
ARGS ?=

.PHONY: install run test test-fast bench lab-up lab-down lab-status clean
HOSTS ?= 2
LAB ?= pnlab

install:
	packaging/install.sh test

run:
	@packaging/install.sh run
	$(VENV)/bin/pynet serve $(ARGS)

test:
	@packaging/install.sh test
	$(PY) -m pytest $(ARGS)

# Only the tiers that need neither root nor Docker.
test-fast:
	@packaging/install.sh test
	$(PY) -m pytest -m "not kernel and not docker and not multihost" $(ARGS)

bench:
	@packaging/install.sh test
	$(PY) -m bench $(ARGS)

# N Docker hosts on this machine, each with its own dockerd and pynet, plus etcd.
lab-up:
	@packaging/install.sh test
	$(VENV)/bin/pynet lab up --hosts $(HOSTS) --name $(LAB)

lab-down:
	$(VENV)/bin/pynet lab down --name $(LAB)

lab-status:
	$(VENV)/bin/pynet lab status --name $(LAB)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
