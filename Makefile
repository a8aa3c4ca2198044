# Two commands do all set-up on a fresh machine:
#   make demo   shipped model on real recordings, then simulate -> retrain -> export -> stream-classify -> bench
#   make test   the test suite
# Each creates the virtual environment .venv on first use and installs what it needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Pin torch first: an unpinned torch pulls GBs of CUDA wheels. 2.13.0 CPU is what this project
# is tested with; on a machine without a local wheel, add the CPU index, e.g.
#   make demo TORCH_INDEX="--index-url https://download.pytorch.org/whl/cpu"
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
EXTRAS ?= all
STAMP := $(VENV)/.stethoedge-$(EXTRAS)
DEMO_OUT ?= out/demo
# The shared real recordings and AudioSet weights when they sit beside the repository.
REAL ?= $(firstword $(wildcard ../shared/data/icbhi_sample/audio_and_txt_files))
WEIGHTS ?= $(firstword $(wildcard ../shared/weights/efficientat_mn04_as.pt))

.PHONY: demo test venv clean system-deps

venv: $(STAMP)

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH_INDEX) "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/stethoedge demo --out $(DEMO_OUT) $(if $(REAL),--real $(REAL)) $(if $(WEIGHTS),--weights $(WEIGHTS))

# System packages some tests need (C compiler, PortAudio/PulseAudio, espeak-ng): installed with apt-get
# where we are root (or have password-less sudo), else the script prints which tests will skip and why.
# SYSTEM_DEPS=0 leaves the system alone.
SYSTEM_DEPS ?= 1
system-deps:
	@STETHOEDGE_SYSTEM_DEPS=$(SYSTEM_DEPS) bash scripts/system-deps.sh

test: system-deps $(STAMP)
	$(PY) -m pytest -q tests

clean:
	rm -rf $(VENV) out build *.egg-info
