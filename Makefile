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
	exec $(BIN)/onecard serve

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check gateway hce qr tests bench
	$(BIN)/ruff format --check gateway hce qr tests bench
	$(BIN)/mypy gateway hce qr

migrate: $(STAMP)
	$(BIN)/onecard migrate

bench: $(STAMP)
	$(BIN)/python -m bench

# Every property-based test with 20,000 examples instead of 100: minutes, not seconds.
fuzz: $(STAMP)
	HYPOTHESIS_PROFILE=fuzz $(BIN)/python -m pytest tests

loadtest: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[loadtest]'
	$(BIN)/locust -f loadtest/locustfile.py --headless --host http://127.0.0.1:8080 -u 50 -r 10 -t 60s

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
