# The README's commands: `make run` trains on whatever data is there and serves; `make test` runs the tests.
# Everything runs in the project's virtual environment .venv, made on first use from the system's
# python3 (Debian's is externally managed: pip refuses to install into it). PYTHON=/path/to/python
# uses that interpreter and its environment instead, as it is.
PORT ?= 3000
# pytest processes (pytest-xdist) of make test (3) and make test-fast (2); TEST_WORKERS=N sets both, 0 runs
# the tests in one. On 2 cores the served tests wait on their servers, and a third process fills the cores
# meanwhile: make test took 0.81x the time of 2 (4: 0.90x); the in-process tier is all CPU (4: 1.11x), 2026-12-07.
TEST_WORKERS ?=
VENV := .venv
ifeq ($(origin PYTHON),undefined)
PYTHON := $(VENV)/bin/python
OWN_VENV := 1
endif
export PYTHON  # container/*.sh and their tests use the same interpreter

.DEFAULT_GOAL := help
.PHONY: help install train serve run test test-fast lint audit loadtest peers ablation container container-test fresh-machine deploy-check monitoring-report compare

help:  ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  make %-18s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

ifdef OWN_VENV
$(PYTHON):
	@python3 -c 'import sys; sys.exit(not (3, 11) <= sys.version_info[:2] <= (3, 13))' || \
	  { echo "error: Python 3.11 to 3.13 needed, python3 is $$(python3 -V 2>&1)" >&2; exit 2; }
	@python3 -m venv $(VENV) || { rm -rf $(VENV); echo "error: python3 cannot make a virtual environment; on Debian or Ubuntu: apt-get install -y python3-venv" >&2; exit 2; }
endif

# pip runs again only when a requirements file is newer than .venv's last install (its stamp): pip finding
# everything installed took 4 s of every make test and make run. With PYTHON=..., it runs every time.
INSTALLED := $(if $(OWN_VENV),$(VENV)/installed,install-always)
.PHONY: install-always
install: $(INSTALLED)  ## the pinned Python packages (serving, training and tests), into .venv
$(INSTALLED): requirements-dev.txt requirements-train.txt requirements.txt $(if $(OWN_VENV),$(PYTHON))
	$(PYTHON) -m pip install -q --disable-pip-version-check -r requirements-dev.txt
	$(if $(OWN_VENV),touch $@)

train: install  ## train on data/dataset_SCL.csv if present (or DATA=path), else the embedded sample
	$(PYTHON) train.py $(if $(DATA),--data '$(DATA)')

serve: install  ## serve the latest trained model on PORT (3000)
	$(PYTHON) -m bentoml serve service:FlightDelay --port $(PORT)

run: train serve  ## train, then serve on PORT: the first of the README's two commands

test: install  ## the whole test suite in TEST_WORKERS processes (3): the second of the README's two commands
	$(PYTHON) -m pytest -n $(or $(TEST_WORKERS),3) --dist worksteal

test-fast: install  ## the in-process tier alone: every test that starts no served process
	$(PYTHON) -m pytest -n $(or $(TEST_WORKERS),2) --dist worksteal -m "not integration"

lint: install  ## ruff and mypy
	$(PYTHON) -m ruff check . && $(PYTHON) -m ruff format --check . && $(PYTHON) -m mypy .

audit: install  ## pip-audit of the runtime packages; exit 1 vulnerable, 2 not all audited (no advisory DB)
	$(PYTHON) tools/dependency_audit.py

loadtest: install  ## the reference stress test (loadtest/results/reference-<today>/), then every shape on the service, the baseline and the ceiling in alternating rounds, and the open-loop curve on the first two (loadtest/results/peers/standing-<today>.md); needs wrk (apt-get install -y wrk)
	$(PYTHON) -m loadtest.run
	$(PYTHON) -m loadtest.peers --targets service baseline ceiling --name standing-$(shell date +%Y-%m-%d)

peers: install  ## the service against the same model behind FastAPI, LitServe and plain BentoML, every shape, alternating rounds: loadtest/results/peers/peers-<today>.md (ARGS="--against main --name NAME" passes options)
	$(PYTHON) -m pip install -q --disable-pip-version-check -r requirements-peers.txt
	$(PYTHON) -m loadtest.peers $(ARGS)

ablation: install  ## one knob at a time, in rounds: loadtest/results/ablation/ablation-<today>.md
	$(PYTHON) -m loadtest.ablation

container: install  ## bento + image flight-delay:<version>; LOCAL_BASE=1 builds a Debian base here (no registry)
	container/build.sh

container-test: install  ## contract and stress tests against the image (IMAGE, PORT, DURATION, NAME=<today>)
	container/test.sh

deploy-check: install  ## render and validate the Kubernetes manifests, test the alert rules and the dashboard's queries
	$(PYTHON) -m pytest -q tests/test_deploy.py tests/test_dashboard.py

monitoring-report: install  ## drift and quality report of the prediction log LOG (monitoring/), OUTCOMES=csv: reports/monitoring-<today>/
	$(PYTHON) tools/monitoring_report.py --log '$(or $(LOG),monitoring)' $(if $(OUTCOMES),--outcomes '$(OUTCOMES)') \
	  $(if $(MODEL),--model '$(MODEL)') $(if $(OUT),--out '$(OUT)')

compare: install  ## CANDIDATE (latest) against BASELINE=tag or SERVED=url on DATA: reports/compare-<today>/; make exits 2 on a refusal too (tools/compare.py: 1 refuse, 2 error)
	$(PYTHON) tools/compare.py $(if $(CANDIDATE),--candidate '$(CANDIDATE)') $(if $(BASELINE),--baseline '$(BASELINE)') \
	  $(if $(SERVED),--served '$(SERVED)') $(if $(DATA),--data '$(DATA)') $(if $(OUT),--out '$(OUT)')

fresh-machine:  ## the README's two commands in bare Debian 12 and 13 containers (DISTROS="bookworm trixie")
	container/fresh-machine.sh $(DISTROS)
