# Quick start: `make image` builds the default image; `make test` runs every test. Both set up first.
IMAGE ?= debian-13
VENV := .venv
PYTEST_ARGS ?=
BENCH_ARGS ?=

.PHONY: setup image container test lint unit bench clean

setup:
	@bash scripts/setup.sh

image: setup
	$(VENV)/bin/assembler build $(IMAGE)

# assembler and every host tool it uses as an image (localhost/assembler:VERSION), from our own Debian base.
container: setup
	$(VENV)/bin/python scripts/container build

lint: setup
	$(VENV)/bin/ruff check assembler tests
	$(VENV)/bin/mypy assembler

unit: setup
	$(VENV)/bin/pytest tests/unit $(PYTEST_ARGS)

# Every marker runs here (unit, integration, podman, e2e): CI calls exactly this. The suite runs on one worker
# a core (at most 4: each TCG boot or emulated build keeps about one busy), a test module per worker, so its
# fixtures are made once; then, alone, the tests that stop the engine or remove images others build on. Both
# parts share one assembler cache, so the second finds debian-12 built.
TEST_WORKERS ?= $(shell n=$$(nproc); [ $$n -gt 4 ] && n=4; echo $$n)
TEST_CACHE := $(or $(TMPDIR),/tmp)/assembler-make-test-cache
test: setup lint
	@rm -rf $(TEST_CACHE); rc=0; \
	ASSEMBLER_TEST_CACHE=$(TEST_CACHE) $(VENV)/bin/pytest tests -m "not exclusive" -n $(TEST_WORKERS) \
	  --dist loadfile $(PYTEST_ARGS) || rc=$$?; \
	ASSEMBLER_TEST_CACHE=$(TEST_CACHE) $(VENV)/bin/pytest tests -m exclusive $(PYTEST_ARGS) \
	  || { r=$$?; [ $$r -eq 5 ] || rc=$$r; }; \
	rm -rf $(TEST_CACHE); exit $$rc

# Timings against the peers (diskimage-builder, mkosi, virt-make-fs, bare qemu-img): table + .bench/results.json.
# Heavy (tens of minutes): e.g. `make bench BENCH_ARGS="--only convert,disk --repeat 1"`. See BENCHMARKS.md.
bench: setup
	@bash scripts/bench-setup
	$(VENV)/bin/python scripts/bench $(BENCH_ARGS)

clean:
	rm -rf out
