# Two commands do all set-up on a fresh machine with Python 3.11: `make demo` and `make test`.
# torch goes in first, pinned, and every later install is constrained to it (constraints.txt),
# so no dependency can pull a newer torch with its CUDA wheels.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export NO_ALBUMENTATIONS_UPDATE := 1

.PHONY: demo demo-lm test lint bench bench-peers venv clean browser postgres

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev]"
	# torchvision's wheel is kept, not installed (its compiled ops do not load with this CPU torch, and
	# transformers would then fail to import its image processors): tests/models/test_torchvision_layout.py
	# builds torchvision's own model definitions from the wheel's Python files to prove ours match them
	$(BIN)/python -m pip download -q --no-deps -d $(VENV)/wheels torchvision==0.28.0
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/modelcycle datasets digits --out data/digits-raw
	$(BIN)/modelcycle prepare data/digits-raw --out data/digits --val 0.2 --seed 0
	$(BIN)/modelcycle train configs/digits.yaml run.name=digits-demo --overwrite
	$(BIN)/modelcycle evaluate runs/digits-demo
	$(BIN)/modelcycle predict runs/digits-demo data/digits-raw/3/0003.png data/digits-raw/7/0007.png
	@echo "Report: runs/digits-demo/report/report.html"

# The language-model pipeline on Python's own docs, offline, about 16 minutes on 2 CPU cores (docs/lm.md),
# then reward model, DPO and PPO (docs/lm-rlhf.md), ending with the quality gates (exit 1 if one fails).
demo-lm: $(STAMP)
	$(BIN)/modelcycle datasets pydocs --out data/pydocs
	$(BIN)/modelcycle lm tokenizer data/pydocs/corpus.txt --vocab 4000 --out runs/tok
	$(BIN)/modelcycle lm pretrain configs/lm-pretrain.yaml --overwrite
	$(BIN)/modelcycle lm sft configs/lm-sft.yaml model.init_from=runs/lm-pretrain --overwrite
	$(BIN)/modelcycle evaluate runs/lm-sft
	$(BIN)/modelcycle lm reward configs/lm-reward.yaml --overwrite
	$(BIN)/modelcycle lm dpo configs/lm-dpo.yaml model.init_from=runs/lm-sft --overwrite
	$(BIN)/modelcycle lm ppo configs/lm-ppo.yaml policy=runs/lm-sft reward=runs/lm-reward --overwrite
	$(BIN)/modelcycle evaluate runs/lm-dpo --against runs/lm-sft --reward runs/lm-reward
	$(BIN)/modelcycle evaluate runs/lm-ppo --against runs/lm-sft
	$(BIN)/modelcycle lm gates runs/lm-pretrain runs/lm-sft --reward runs/lm-reward --dpo runs/lm-dpo --ppo runs/lm-ppo

# Two test processes (pytest-xdist): most tests wait on the commands, servers and trainings they
# start, so on two cores two processes take 530 to 600 s where one took 919 s. TEST_WORKERS=auto uses
# every core; TEST_WORKERS=0 runs in this process (for a debugger, or -x with one traceback).
TEST_WORKERS ?= 2
test: $(STAMP) browser postgres
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS)

# The playground page is tested in a real headless Chromium: Debian's, with its driver (as root).
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; } || \
	  echo "note: chromium + chromium-driver not installed (not root); the browser test will be skipped"

# `tune --storage postgresql://...` is tested against a real server: Debian's PostgreSQL binaries
# (as root). The tests run initdb in a temporary folder and start their own server on a free
# loopback port, as the postgres user; a cluster the package may have started is not used.
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; } || \
	  echo "note: postgresql not installed (not root, or apt-get failed); the PostgreSQL tune tests will be skipped"

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

bench: $(STAMP)
	for f in benchmarks/bench_*.py; do $(BIN)/python $$f || exit 1; done

# modelcycle against Lightning, the HF Trainer, TRL, LitServe and plain transformers (docs/benchmarks.md),
# about 70 minutes on the shared 2-core VM; not part of `make test`. A venv of its own, torch pinned as ours, with
# modelcycle installed in it: each side runs in a fresh process of the same Python.
# Options: make bench-peers PEERS_ARGS="--only dpo --rounds 5" (--help lists them)
PEERS       := .venv-peers
PEERS_STAMP := $(PEERS)/.installed
$(PEERS_STAMP): pyproject.toml constraints.txt benchmarks/peers/constraints.txt
	test -x $(PEERS)/bin/python || $(PYTHON) -m venv $(PEERS)
	$(PEERS)/bin/python -m pip install -q --upgrade pip
	$(PEERS)/bin/python -m pip install -q torch==2.13.0
	$(PEERS)/bin/python -m pip install -q -c constraints.txt -c benchmarks/peers/constraints.txt -e . \
	  pytorch-lightning trl litserve
	$(PEERS)/bin/python -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	touch $(PEERS_STAMP)

bench-peers: $(PEERS_STAMP)
	$(PEERS)/bin/python benchmarks/peers/run_peers.py $(PEERS_ARGS)

clean:
	rm -rf $(VENV) data runs
