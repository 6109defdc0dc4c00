# The two commands: `make demo` and `make test`. Both set themselves up (scripts/bootstrap.sh).
VENV  := .venv
KILN  := $(VENV)/bin/kiln
DEMO_OUT := build/demo

.PHONY: help bootstrap test test-slow lint demo site-down schema bench clean

help:
	@echo "make demo   - set up, start the local site, validate, plan and render the example recipes"
	@echo "make site-down - stop the local site that make demo started"
	@echo "make test   - set up, then run ruff and the test suite (incl. a real x86_64 DIB build + boot)"
	@echo "make test-slow - the emulated ppc64le build and pseries boot (~20 min)"
	@echo "make schema - regenerate schemas/recipe.schema.json"
	@echo "make bench  - run the benchmarks in bench/"

bootstrap:
	@scripts/bootstrap.sh

lint: bootstrap
	$(VENV)/bin/ruff check .

test: bootstrap
	$(VENV)/bin/ruff check .
	$(VENV)/bin/python -m pytest -m "not emulated"

# The emulated-architecture checks (a ppc64le DIB build under qemu-user, a pseries TCG boot):
# ~20 min on 2 cores, so they are kept out of `make test`.
test-slow: bootstrap
	$(VENV)/bin/python -m pytest -m emulated

demo: bootstrap
	$(KILN) site up
	$(KILN) validate
	$(KILN) plan
	$(KILN) render -o $(DEMO_OUT)
	@echo "rendered build files are under $(DEMO_OUT)/ (one directory per target)"
	@echo "the local site keeps running (make site-down stops it); kiln site status shows it"

site-down: bootstrap
	$(KILN) site down

schema: bootstrap
	$(KILN) schema -o schemas/recipe.schema.json

bench: bootstrap
	$(VENV)/bin/python bench/plan_scale.py
	$(VENV)/bin/python bench/publish.py

clean:
	rm -rf build .kiln .pytest_cache .ruff_cache
