# Two entry points on a fresh machine: `make demo` and `make test`; both set up .venv first.
PYTHON ?= python3
VENV ?= .venv
# Override on GPU machines, e.g. `make setup TORCH_SPEC="torch --index-url ..."`, or pre-install torch.
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo demo-pretrain test bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[test]"
	touch $(STAMP)

setup: $(STAMP)

# The paper's comparison on the synthetic set (18.6 CPU-min, ~10-15 min on 2 cores): runs/study/report.md
demo: $(STAMP)
	$(BIN)/tgmae study -c configs/study_synthetic.yaml

# One tiny pretraining run with figures (~2 min): runs/demo/
demo-pretrain: $(STAMP)
	$(BIN)/tgmae demo-pretrain --out runs/demo

test: $(STAMP)
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python benchmarks/pretrain_step.py --json docs/bench_pretrain_step.json

clean:
	rm -rf $(VENV) runs build *.egg-info src/*.egg-info
