# The README's two commands. Both run scripts/setup.sh first (idempotent: under a second on a ready machine).
#   make run    set up, then train: the paper grid on every GPU here (one process each), or without a GPU the
#               smoke grid on offline data (bench/launch.py says which and why)
#   make test   set up, then run the whole test suite
# ARGS passes options to run_all.py, e.g. make run ARGS="--preset smoke --source ../shared/data/cifar10-jpeg.tar.gz"
# ALLCONV_GPUS=N uses N GPUs instead of all of them (N=0: as if there were none).
ARGS ?=
PYTEST_ARGS ?=
# The suite runs in TEST_WORKERS pytest-xdist processes of one thread each (test files stay whole: their module
# fixtures are built once); TEST_WORKERS=0 runs it in this process, with torch's default threads.
TEST_WORKERS ?= 2

.PHONY: setup run plan test bench report
setup:
	bash scripts/setup.sh

run: setup
	.venv/bin/python -m bench.launch $(ARGS)

plan: setup
	.venv/bin/python -m bench.launch --plan $(ARGS)

test: setup
	$(if $(filter 0,$(TEST_WORKERS)),,OMP_NUM_THREADS=1) .venv/bin/python -m pytest -n $(TEST_WORKERS) --dist loadfile \
		$(PYTEST_ARGS)

bench: setup
	.venv/bin/python -m pytest tests/benchmarks --benchmark-enable --benchmark-autosave $(PYTEST_ARGS)

report: setup
	.venv/bin/python -m reports --results results --out report
