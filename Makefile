SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
UV_VERSION := 0.13.9

.PHONY: venv demo test lock clean bench-accuracy bench-range bench-training bench-serving bench-faults bench-features bench-monitoring manifests up down

# The virtualenv is rebuilt whenever the lock file changes.
$(BIN)/.synced: requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	$(BIN)/uv pip sync --quiet --compile-bytecode --python $(BIN)/python requirements.lock
	$(BIN)/uv pip install --quiet --python $(BIN)/python --no-deps -e .
	touch $@

venv: $(BIN)/.synced

# The BigQuery emulator the gcp-profile tests run against, in its own virtualenv (it pins its own duckdb).
CRUCIBLE := .crucible/bin/crucible
$(CRUCIBLE):
	$(PYTHON) -m venv .crucible
	.crucible/bin/pip install --quiet --disable-pip-version-check 'crucible-emulator[server]==0.1.0a2'

## Run the whole loop on simulated orders: flows -> Feast -> LightGBM -> gate -> Bento -> HTTP -> drift.
demo: venv
	$(BIN)/python -m flows.demo

# `make up` scrapes the services with Debian's Prometheus (no recommended packages: node exporter and the like).
PROMETHEUS := /usr/bin/prometheus
$(PROMETHEUS):
	(apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus) || { echo "make up needs Debian's prometheus at $@: apt-get install prometheus" >&2; exit 1; }

## The local stack in the background: Prefect server, work pool and worker, deployments, EtaQuote and EtaOrder,
## Evidently UI, Prometheus; prints each part's URL once it answers (state, pids and logs in .eta/stack/).
up: venv $(PROMETHEUS)
	$(BIN)/python -m flows.stack up

## Stop exactly what `make up` started.
down: venv
	$(BIN)/python -m flows.stack down

# The browser tests render pages in Debian's chromium (tests/test_browser.py).
CHROMIUM := /usr/bin/chromium
$(CHROMIUM):
	(apt-get update -qq && apt-get install -y -qq chromium) || { echo "tests need Debian's chromium at $@: apt-get install chromium" >&2; exit 1; }

# The alert rules are checked and unit-tested with promtool, from Debian's prometheus (tests/test_alerts.py).
PROMTOOL := /usr/bin/promtool
$(PROMTOOL):
	(apt-get update -qq && apt-get install -y -qq prometheus) || { echo "tests need promtool at $@: apt-get install prometheus" >&2; exit 1; }

## Run the whole test suite against the real Redis, Prefect server and `bentoml serve`.
test: venv $(CRUCIBLE) $(CHROMIUM) $(PROMTOOL)
	$(BIN)/python -m pytest

## Every Kubernetes manifest as one YAML stream: `make manifests | kubectl apply -f -`. The meal-peak CronJobs come
## from the orders held in NAMESPACE (default: eta.yaml's feast_project).
manifests: venv
	@$(BIN)/eta manifests $(if $(NAMESPACE),--namespace $(NAMESPACE))

## Recompile requirements.lock after editing requirements.in, and the Bento's requirements-serving.lock with it
## (the serving dependencies only, at the full lock's versions).
lock: venv
	$(BIN)/uv pip compile --quiet requirements.in -o requirements.lock --python-version 3.11
	$(BIN)/uv pip compile --quiet requirements-serving.in -c requirements.lock -o requirements-serving.lock --python-version 3.11

clean:
	rm -rf $(VENV) .eta

## How low MAE can go on the DoorDash sample: the model vs oracles that see the future; writes benchmarks/results/accuracy_ceiling.json.
DOORDASH := ../shared/data/doordash_orders_sample.csv
bench-accuracy: venv
	$(BIN)/eta train --orders $(DOORDASH) --train-until 2015-02-11 > /dev/null
	$(BIN)/python -m benchmarks.accuracy_ceiling

## The 80% range per DoorDash market: the test week, earlier windows, and the chance a split-conformal range lands every market in 77-83%; writes benchmarks/results/range_per_market.json.
bench-range: venv
	$(BIN)/eta train --orders $(DOORDASH) --train-until 2015-02-11 > /dev/null
	$(BIN)/python -m benchmarks.range_per_market

## Training benchmark on 1M simulated orders; writes benchmarks/results/training.json.
bench-training: venv
	$(BIN)/python -m benchmarks.training

## Serving benchmark: Bento services vs plain FastAPI vs `feast serve`; writes benchmarks/results/serving.json.
bench-serving: venv
	$(BIN)/python -m benchmarks.serving

## Redis killed, then the EtaOrder worker killed, under 500 req/s: 5xx, slowest answer, degraded share, recovery,
## unanswered requests, answered predictions missing from the landed log; writes benchmarks/results/faults.json.
bench-faults: venv
	$(BIN)/python -m benchmarks.faults

## Feature pipeline at 1M simulated orders; writes benchmarks/results/features.json.
bench-features: venv
	$(BIN)/python -m benchmarks.features

## The feedback loop: the weekly report over 200,000 landed predictions, and the DoorDash sample replayed through the
## HTTP service on a simulated clock (MAE as served vs point in time); writes benchmarks/results/monitoring.json.
bench-monitoring: venv
	$(BIN)/python -m benchmarks.monitoring

## The feedback loop proved on simulated worlds: 10 unchanged weeks (false retrains) and four world changes (rain,
## courier shortage, menu change, new stores) through the real service, flows and Prefect;
## writes benchmarks/results/scenarios.json.
.PHONY: scenarios
scenarios: venv
	$(BIN)/python -m benchmarks.scenarios
