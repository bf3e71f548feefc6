# The two commands of the README: `make demo` and `make test`.
# Both create the virtualenv, install the Python packages and check the
# Debian packages they need (installed with apt-get when run as root).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
OSLO_VENV ?= .venv-oslo
OSLO_STAMP := $(OSLO_VENV)/.installed
# Test processes: most tests wait on simulated nodes, sshd and subprocesses
# rather than compute, so 4 share 2 cores well (9-10 min instead of ~20).
TEST_WORKERS ?= 4

.PHONY: demo test lint deps-test deps-demo venv oslo-venv clean bench

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

# The option-definition check runs in its own virtualenv: the 2023.1
# OpenStack pins clash with our own dependencies (research/config-validation.md).
$(OSLO_STAMP): etc/oslo-check-requirements.txt
	test -x $(OSLO_VENV)/bin/python || $(PY) -m venv $(OSLO_VENV)
	$(OSLO_VENV)/bin/pip install -q 'setuptools<82' wheel
	$(OSLO_VENV)/bin/pip install -q --no-deps --no-build-isolation -r etc/oslo-check-requirements.txt
	touch $(OSLO_STAMP)

oslo-venv: $(OSLO_STAMP)

deps-test:
	@scripts/ensure-debian-packages openssh-server chromium git

deps-demo:
	@scripts/ensure-debian-packages git

demo: deps-demo $(STAMP)
	$(BIN)/hyperv-ci demo

test: deps-test $(STAMP) $(OSLO_STAMP)
	scripts/ensure-postgres
	$(BIN)/ruff check .
	$(BIN)/mypy ci listener runners dashboard
	$(BIN)/pytest -q -n $(TEST_WORKERS) --durations=15

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy ci listener runners dashboard

# Every benchmark, then one table of every figure and its goal (bench/run.py).
bench: $(STAMP)
	scripts/ensure-postgres
	$(BIN)/pip install -q -e '.[bench]'
	$(BIN)/python -m bench.run

clean:
	rm -rf $(VENV) $(OSLO_VENV) .demo
