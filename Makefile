# The README's two commands. Both run scripts/setup.sh first (idempotent: seconds on a ready machine).
#   make run    set up, then train the Table 3 grid: accelerate launch bench/run_all.py
#   make test   set up, then run the whole test suite
# ARGS passes options to run_all.py, e.g. make run ARGS="--preset smoke --source ../shared/data/cifar10-jpeg.tar.gz"
# LAUNCH picks the launcher; the default uses accelerate_config.yaml (multi-GPU DDP, bf16).
ARGS ?=
LAUNCH ?= .venv/bin/accelerate launch --config_file accelerate_config.yaml
PYTEST_ARGS ?=

.PHONY: setup run test bench report
setup:
	bash scripts/setup.sh

run: setup
	$(LAUNCH) bench/run_all.py $(ARGS)

test: setup
	.venv/bin/python -m pytest $(PYTEST_ARGS)

bench: setup
	.venv/bin/python -m pytest tests/benchmarks --benchmark-enable --benchmark-autosave $(PYTEST_ARGS)

report: setup
	.venv/bin/python -m reports --results results --out report
