# The two commands a newcomer needs are `make run` and `make test`; the rest are for developers.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint migrate bench fuzz loadtest clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,speed]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/onecard keys init
	$(BIN)/onecard migrate
	ONECARD_SANDBOXES=$${ONECARD_SANDBOXES:-true} exec $(BIN)/onecard serve

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check gateway hce qr tests bench
	$(BIN)/ruff format --check gateway hce qr tests bench
	$(BIN)/mypy --strict gateway hce qr

migrate: $(STAMP)
	$(BIN)/onecard migrate

bench: $(STAMP)
	$(BIN)/python -m bench

# Every property-based test with 20,000 examples instead of 100: minutes, not seconds.
fuzz: $(STAMP)
	HYPOTHESIS_PROFILE=fuzz $(BIN)/python -m pytest tests

LOADTEST_STAMP := $(VENV)/.loadtest-installed
LOADTEST_ARGS ?= -u 50 -r 10 -t 60s

$(LOADTEST_STAMP): pyproject.toml $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[loadtest]'
	touch $(LOADTEST_STAMP)

# Against the gateway `make run` serves (same ONECARD_HOST / ONECARD_PORT) in another terminal.
loadtest: $(LOADTEST_STAMP)
	$(BIN)/locust -f loadtest/locustfile.py --headless \
		--host http://$${ONECARD_HOST:-127.0.0.1}:$${ONECARD_PORT:-8080} $(LOADTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
