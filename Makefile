# The README's commands. `make run` trains on whatever data is there and serves; `make test` runs the tests.
PYTHON ?= python3
PORT ?= 3000

.PHONY: install train serve run test lint audit loadtest ablation container container-test

install:  ## the pinned Python packages, for serving, training and testing
	$(PYTHON) -m pip install -q --disable-pip-version-check -r requirements-dev.txt

train: install  ## train on data/dataset_SCL.csv if present (or DATA=path), else the embedded sample
	$(PYTHON) train.py $(if $(DATA),--data $(DATA))

serve:  ## serve the latest trained model on PORT
	$(PYTHON) -m bentoml serve service:FlightDelay --port $(PORT)

run: train serve

test: install
	$(PYTHON) -m pytest

lint:
	$(PYTHON) -m ruff check . && $(PYTHON) -m ruff format --check . && $(PYTHON) -m mypy .

audit: install  ## pip-audit of the runtime packages; exit 1 vulnerable, 2 not all audited (no advisory DB)
	$(PYTHON) dependency_audit.py

loadtest:  ## the reference stress test with both baselines; needs wrk (apt-get install -y wrk)
	$(PYTHON) loadtest/run.py --baselines

ablation:  ## one knob at a time, in rounds: loadtest/results/ablation/ablation.md
	$(PYTHON) loadtest/ablation.py

container:  ## bento + image flight-delay:<version>; LOCAL_BASE=1 builds a Debian base here (no registry)
	container/build.sh

container-test:  ## contract and stress tests against the image (IMAGE, PORT, DURATION)
	container/test.sh
