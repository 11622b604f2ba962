# The two commands: `make run` (the product) and `make test` (the suite).
# Both create the virtual environment and install what is needed on first use.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cksum requirements.txt | cut -d' ' -f1)

.PHONY: install run test lint superuser demo-model

$(STAMP): requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	@rm -f $(VENV)/.installed-*
	@touch $(STAMP)

install: $(STAMP)

run: install
	scripts/run.sh

test: install
	scripts/test.sh $(ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

superuser: install
	scripts/superuser.sh $(ARGS)

demo-model: install
	scripts/manage.sh build_demo_model
