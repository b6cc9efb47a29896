# Two entry points for a fresh Debian machine, as root: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= $(shell test -x /usr/bin/python3 && echo /usr/bin/python3 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# Debian packages: what the demo needs, and what the test suite's real programs need.
APT_DEMO := python3 python3-venv python3-dev gcc iproute2 util-linux procps iptables
APT_TEST := $(APT_DEMO) libc6-dev golang-go busybox-static strace curl iptables nftables \
            dnsmasq-base redis-server redis-tools nodejs default-jdk-headless gdb delve openssl

.PHONY: all demo test lint proto proto-check unit bench clean apt-demo apt-test venv

all: venv

apt-demo:
	@./scripts/apt-ensure $(APT_DEMO)

apt-test:
	@./scripts/apt-ensure $(APT_TEST)

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip > $(VENV)/pip.log 2>&1 || { cat $(VENV)/pip.log; exit 1; }
	$(PY) -m pip install -q -e '.[dev]' >> $(VENV)/pip.log 2>&1 || { cat $(VENV)/pip.log; exit 1; }
	touch $@

demo: apt-demo venv
	$(PY) -m mirrord.demo

proto: venv
	cd proto && PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(CURDIR)/$(PY) -m grpc_tools.protoc -I. \
	  --python_out=.. --grpc_python_out=.. --mypy_out=.. --mypy_grpc_out=.. \
	  mirrord/v1/*.proto

lint: venv
	$(VENV)/bin/ruff check mirrord tests bench scripts
	$(VENV)/bin/ruff format --check mirrord tests bench scripts
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

test: apt-test venv lint
	$(VENV)/bin/pytest -q -rs -p no:cacheprovider $(PYTEST_ARGS)

bench: apt-test venv
	for b in overhead files network network_kube incoming kube_ls; do $(PY) bench/$$b.py || exit 1; done

clean:
	rm -rf $(VENV) build .pytest_cache .mypy_cache .ruff_cache
