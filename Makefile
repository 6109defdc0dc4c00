# The two commands: `make demo` and `make test`. Both set themselves up (scripts/bootstrap.sh).
VENV  := .venv
KILN  := $(VENV)/bin/kiln
DEMO_OUT := build/demo

.PHONY: help bootstrap test test-slow lint demo site-down schema bench clean lock fuzz

help:
	@echo "make demo   - set up, start the local site, validate/plan/render the examples, then build,"
	@echo "              boot-test and publish the Debian 12 x86_64 image to the local Glance (~5 min)"
	@echo "              make demo IPA=1 adds the IPA ramdisk (~15 min), CONTAINERS=1 the CUDA images (~6 min)"
	@echo "make site-down - stop the local site that make demo started"
	@echo "make test   - set up, then run ruff and the test suite (incl. a real x86_64 DIB build + boot)"
	@echo "make test-slow - the emulated ppc64le build and pseries boot, the CUDA devel image (~30 min)"
	@echo "make schema - regenerate schemas/recipe.schema.json"
	@echo "make bench  - run the benchmarks in bench/ (~25 min: real DIB, IPA and container builds)"
	@echo "make fuzz N=100000 - run both fuzzers: the recipe fuzzer (the example recipes mutated N times"
	@echo "              through validate/plan/render) and the repo-metadata fuzzer (N mutated repos over"
	@echo "              loopback through the metadata reader and kiln rpm missing's comparison);"
	@echo "              failures (with their input) go to FUZZ_OUT (default build/fuzz; metadata/ under it)"
	@echo "make lock   - re-resolve requirements.lock (pinned, hashed Python deps) from pyproject.toml;"
	@echo "              make lock LOCK_ARGS=--upgrade takes the newest allowed releases"

bootstrap:
	@scripts/bootstrap.sh

lint: bootstrap
	$(VENV)/bin/ruff check .

# Two workers (pytest-xdist): the long builds are mostly single-threaded, so the rest of the suite runs
# beside them; tests that share a resource stay on one worker (tests/conftest.py WORKER_GROUPS).
PYTEST := $(VENV)/bin/python -m pytest -n 2 --dist loadgroup --durations=10

test: bootstrap
	$(VENV)/bin/ruff check .
	$(PYTEST) -m "not emulated and not heavy"

# The fuzzer (tests/support/fuzz.py): N seeded cases on every core; `make test` runs 3,000 of them.
N ?= 10000
SEED ?= 1
FUZZ_OUT ?= build/fuzz
# Then the repo metadata fuzzer (tests/support/metadata_fuzz.py): N mutated repos over loopback through
# the metadata reader and `kiln rpm missing`'s comparison. Both run; either failing fails the target.
fuzz: bootstrap
	$(VENV)/bin/python -m tests.support.fuzz --cases $(N) --seed $(SEED) --out $(FUZZ_OUT); recipes=$$?; \
	$(VENV)/bin/python -m tests.support.metadata_fuzz --cases $(N) --seed $(SEED) --out $(FUZZ_OUT)/metadata; \
	metadata=$$?; exit $$((recipes || metadata))

# The emulated-architecture checks (a ppc64le DIB build under qemu-user, a pseries TCG boot) and the
# heavy native ones (the CUDA devel image: ~800 MB of packages): kept out of `make test`.
test-slow: bootstrap
	$(PYTEST) -m "emulated or heavy"

demo: bootstrap
	$(KILN) site up
	$(KILN) validate
	$(KILN) plan
	$(KILN) render -o $(DEMO_OUT)
	@echo "rendered build files are under $(DEMO_OUT)/ (one directory per target)"
	$(KILN) build debian-12 --arch x86_64 --publish
ifeq ($(IPA),1)
	$(KILN) build ipa-bookworm --arch x86_64 --publish
	@echo "the IPA ramdisk is in the local Glance (aki/ari) and under http://127.0.0.1:18080/ipa/"
endif
ifeq ($(CONTAINERS),1)
	@docker info >/dev/null 2>&1 || { echo "start the docker engine first (dockerd &)"; exit 3; }
	$(KILN) build cuda-runtime --publish
	@echo "kiln/cuda:11.8-runtime-bookworm (amd64 + ppc64le) is in the local registry (see README: credentials)"
endif
	$(KILN) site status
	@echo "the Debian 12 image is in the local Glance, behind the local Keystone:"
	@echo "  OS_CLIENT_CONFIG_FILE=.kiln/site/keystone/clouds.yaml openstack --os-cloud kiln-local image list --long"
	@echo "the local site keeps running (make site-down stops it)"

site-down: bootstrap
	$(KILN) site down

schema: bootstrap
	$(KILN) schema -o schemas/recipe.schema.json

bench: bootstrap
	$(VENV)/bin/python bench/plan_scale.py
	$(VENV)/bin/python bench/pipeline_scale.py --validate
	$(VENV)/bin/python bench/publish.py
	$(VENV)/bin/python bench/guest_overhead.py
	$(VENV)/bin/python bench/base_tree.py
	$(VENV)/bin/python bench/rpm_rebuild.py
	$(VENV)/bin/python bench/rpm_missing.py
	$(VENV)/bin/python bench/ipa.py
	$(VENV)/bin/python bench/container.py

# The only way Python dependency versions change: bootstrap installs exactly what the lock pins.
# Keeps current pins unless LOCK_ARGS says otherwise (--upgrade, --upgrade-package NAME).
lock:
	scripts/lock.sh $(LOCK_ARGS)

clean:
	rm -rf build .kiln .pytest_cache .ruff_cache
