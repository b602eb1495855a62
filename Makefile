# tpserve: controller entry points. `make help` lists them.
# Every ansible call here passes `-i inventory/lab` explicitly: ansible.cfg's default inventory
# is a real remote cluster.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.tpserve-stamp
LAB_INV := inventory/lab
# Passed through to tests/lab/lab.sh (and so to every target that brings the lab up).
export LAB_NODES ?= 4
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

APT_PACKAGES := python3 python3-venv podman runc debootstrap zstd openssh-client pdsh rsync shellcheck
VENV_INPUTS := requirements/controller.txt app/requirements.lock $(wildcard app/pyproject.toml)

.PHONY: help venv deps deps-ensure lab-up lab-down lab-status lint unit molecule integration integration-trixie integration-jakarta lock-check test demo smoke-plot chaos load monitoring clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

venv: $(STAMP) ## controller virtualenv (.venv) from requirements/controller.txt + app/requirements.lock

$(STAMP): $(VENV_INPUTS)
	@if ! $(PYTHON) -c 'import ensurepip, venv' 2>/dev/null; then \
	  echo "make venv: installing python3-venv with apt"; \
	  if [ "$$(id -u)" = 0 ]; then apt-get install -y -q python3-venv >/dev/null; \
	  else echo "make venv: python3-venv is missing: run 'sudo apt-get install python3-venv'" >&2; exit 1; fi; \
	fi
	@[ -x $(VENV)/bin/python ] || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q -r requirements/controller.txt -r app/requirements.lock
	@if [ -f app/pyproject.toml ]; then $(VENV)/bin/python -m pip install -q -e app; fi
	@touch $@

# matplotlib for the smoke report's picture lives in a small venv of its own (not in the controller's:
# make test does not need it; measured: 17 s and 200 MB with numpy, 14 s and 80 MB on top of .venv).
PLOT_VENV := .venv-plot
PLOT_STAMP := $(PLOT_VENV)/.tpserve-stamp
PLOT_REQUIREMENT := matplotlib==3.11.2
# the reports make smoke-plot draws: default the integration's stage reports, else the demo's one
SMOKE_REPORTS ?=

$(PLOT_STAMP):
	@[ -x $(PLOT_VENV)/bin/python ] || $(PYTHON) -m venv $(PLOT_VENV)
	$(PLOT_VENV)/bin/python -m pip install -q $(PLOT_REQUIREMENT)
	@touch $@

deps-ensure: ## install only the apt packages that are missing (no-op when all are there)
	@missing=$$(for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "make: installing missing apt packages:" $$missing; \
	  if [ "$$(id -u)" != 0 ]; then echo "make: run as root (or 'sudo make deps')" >&2; exit 1; fi; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	fi

deps: ## apt packages the controller needs (root)
	apt-get update -q
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(APT_PACKAGES)

lab-up: ## start the local lab (LAB_NODES=2..8, default 4) and write inventory/lab
	tests/lab/lab.sh up

lab-down: ## remove the local lab's containers and network
	tests/lab/lab.sh down

lab-status: ## table of the lab's nodes
	tests/lab/lab.sh status

lint: venv ## yamllint, ansible-lint, ruff, shellcheck
	tests/lint.sh

unit: venv ## pytest app/tests (and tests/unit)
	tests/run_ci.sh unit

molecule: venv ## every molecule scenario (molecule test -s NAME)
	tests/run_ci.sh molecule

integration: venv ## lab-up, site.yml twice (changed=0), --check, serve.yml, smoketest.yml
	tests/integration.sh

# Debian 13 (CPython 3.13) nodes: a private 2-node lab, the release path of tests/integration.sh, then down.
T13_LAB := LAB_RELEASE=trixie LAB_NODES=2 LAB_PREFIX=t13- LAB_SUBNET=10.89.50.0/24 LAB_NETWORK=tpserve-t13 LAB_INVENTORY=/tmp/t13-inv
integration-trixie: venv ## 2 Debian 13 nodes: site.yml twice (changed=0) + --check, serve.yml twice, smoketest.yml; lab down
	@rc=0; $(T13_LAB) INTEGRATION_SCOPE=release INTEGRATION_ARGS="-e tpserve_tp_size=2" \
	  INTEGRATION_LOG_DIR=reports/integration-trixie tests/integration.sh || rc=$$?; \
	$(T13_LAB) tests/lab/lab.sh down; exit $$rc

# Jakarta's group_vars on a private 4-node lab, only what the lab forces overridden (tests/lab/jakarta-overrides.yml).
JK_LAB := LAB_NODES=4 LAB_PREFIX=jk- LAB_SUBNET=10.89.31.0/24 LAB_NETWORK=tpserve-jk LAB_INVENTORY=/tmp/jk-inv
integration-jakarta: venv ## inventory/jakarta's group_vars on 4 lab nodes (overrides printed): site.yml twice (changed=0), serve.yml, smoketest.yml via HAProxy; lab down
	$(JK_LAB) tests/jakarta_on_lab.sh

lock-check: venv ## which CPython versions the lock installs on (PyPI, no download); records tests/lock/python-support.json
	$(VENV)/bin/python tests/lock/python_support.py --write

test: deps-ensure venv ## lint -> unit -> molecule -> integration, one summary line
	tests/run_ci.sh

demo: deps-ensure venv lab-up ## lab-up, site.yml, serve.yml, smoketest.yml on the lab; print the smoke report
	@for pb in site.yml serve.yml smoketest.yml; do \
	  if [ ! -f $$pb ]; then echo "$$pb: not there yet"; continue; fi; \
	  echo "== ansible-playbook -i $(LAB_INV) $$pb"; \
	  ansible-playbook -i $(LAB_INV) $$pb; \
	done
	@report=reports/smoke-$(notdir $(LAB_INV)).json; \
	if [ -f "$$report" ]; then echo "== $$report"; $(VENV)/bin/python -m json.tool "$$report"; \
	else echo "smoke report: not there yet ($$report)"; fi
	@if [ -x $(PLOT_VENV)/bin/python ]; then \
	  $(MAKE) --no-print-directory smoke-plot SMOKE_REPORTS=reports/smoke-$(notdir $(LAB_INV)).json; \
	else echo "make smoke-plot: the smoke report as a PNG (latency per check; makes $(PLOT_VENV) with matplotlib once)"; fi

smoke-plot: $(PLOT_STAMP) ## the smoke report(s) as a PNG: latency per check, every load request (reports/smoke-<lab>.png)
	@name=smoke-$(notdir $(LAB_INV)); \
	set -- $(SMOKE_REPORTS); [ $$# -gt 0 ] || set -- reports/$$name-*.json; \
	[ -f "$$1" ] || set -- reports/$$name.json; \
	[ -f "$$1" ] || { echo "make smoke-plot: no reports/$$name*.json yet (make demo or make integration)" >&2; exit 1; }; \
	$(PLOT_VENV)/bin/python roles/smoketest/files/smoke_plot.py "$$@" --out reports/$$name.png

chaos: venv ## faults on the served lab (kill -9 rank, corrupt model, reboots, node down, partition, model update on a full disk, rolling restart + replicas behind HAProxy) + security
	tests/chaos/run.sh

load: venv ## 2 x 500 requests at 32 clients on the served lab: statuses, p50/p99, rank 0 RSS
	tests/load/run.sh

monitoring: venv ## on the served lab: serve.yml with monitoring (twice, changed=0), listen addresses, every dashboard query has data under load
	tests/monitoring/run.sh

clean: ## take the lab down, drop the venv, caches and reports (keeps the image cache)
	-tests/lab/lab.sh down
	rm -rf $(VENV) $(PLOT_VENV) .facts reports .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
