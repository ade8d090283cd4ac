# Set-up and checks. Every install step lives here so a fresh machine can run them.
PYTHON ?= python3
VENV ?= .venv
AXOLOTL_VENV ?= .venv-axolotl
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup setup-bench setup-axolotl wordnet test test-fast lint format demo census

setup: $(VENV)/.installed

# torch comes from the constraints file (the CPU wheel on these machines), then the package.
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt torch==2.13.0
	$(PY) -m pip install --quiet -c constraints.txt -e ".[trl,dev]"
	touch $@

# the evidence harness (hft demo, hft bench): its own distribution, in benchmarks/
setup-bench: $(VENV)/.installed-bench

$(VENV)/.installed-bench: $(VENV)/.installed benchmarks/pyproject.toml
	$(PY) -m pip install --quiet -c constraints.txt -e benchmarks
	touch $@

# axolotl pins other transformers/trl/peft versions: it gets its own virtualenv
setup-axolotl:
	HFT_AXOLOTL_VENV=$(AXOLOTL_VENV) PYTHON=$(PYTHON) bash scripts/setup-axolotl-venv.sh

test: setup setup-bench setup-axolotl
	HFT_AXOLOTL_VENV=$(CURDIR)/$(AXOLOTL_VENV) $(PY) -m pytest -q

# the inner loop: core, registry, built-ins and CLI, no framework runs (under two minutes)
test-fast: setup
	$(PY) -m pytest -q -m "not slow" --ignore=tests/integrations --ignore=tests/distributed \
		--ignore=tests/demo --ignore=tests/evidence --ignore=tests/test_census.py \
		--ignore=tests/test_benchmarks_smoke.py

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# the WordNet demo's real text: Debian's wordnet-base (installed here when missing and root)
WORDNET_DIR ?= /usr/share/wordnet
wordnet:
	@test -f $(WORDNET_DIR)/data.noun || { test "$$(id -u)" = 0 && \
		{ apt-get install -y -q wordnet-base >/dev/null 2>&1 || \
		  { apt-get update -q >/dev/null && apt-get install -y -q wordnet-base >/dev/null; }; }; } || \
		{ echo "make: WordNet is missing: run 'apt-get install wordnet-base' as root (Debian/Ubuntu)" >&2; exit 2; }
	@test -f $(WORDNET_DIR)/data.noun || { echo "make: no $(WORDNET_DIR)/data.noun after installing wordnet-base" >&2; exit 2; }

demo: setup setup-bench wordnet
	$(VENV)/bin/hft demo --out hft-demo

# docs/architectures.md (+ .json): every causal/seq2seq LM type of transformers, built tiny and checked
census: setup
	$(PY) scripts/census.py
