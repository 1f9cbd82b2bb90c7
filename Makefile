# slimvit: `make demo` and `make test` each set everything up on a fresh machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# torch 2.13.0 CPU is pinned first: pip takes it from local disk; an unpinned torch pulls a
# multi-GB CUDA build.
TORCH := torch==2.13.0
# pytest-xdist workers: one per core (the suite is CPU-bound, 2 cores here).
TEST_WORKERS ?= $(shell nproc 2>/dev/null || echo 2)

.PHONY: install demo test test-py test-kotlin test-web ios-vectors lock lint clean bench

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: install
	$(BIN)/slimvit demo --out demo_out

test: test-py test-kotlin test-web

# The layer contracts of pyproject.toml (docs/architecture.md) first: a lower layer importing a
# higher one fails the build.
test-py: install
	$(BIN)/lint-imports --no-cache
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --durations=15 tests

# The Android app's pure policy module, compiled with Debian's kotlinc and run on the JVM
# against the shared conformance vectors.
KOTLIN_SRC := $(wildcard android_demo/policy/src/main/kotlin/dev/slimvit/policy/*.kt) \
	android_demo/policy/src/test/kotlin/dev/slimvit/policy/Conformance.kt
KOTLIN_JAR := build/kotlin/policy-conformance.jar
# The pack rebuilder (android_demo/pack/), with the policy module's JSON reader for the vectors.
PACK_SRC := android_demo/pack/src/main/kotlin/dev/slimvit/pack/Pack.kt \
	android_demo/pack/src/test/kotlin/dev/slimvit/pack/Conformance.kt \
	android_demo/policy/src/main/kotlin/dev/slimvit/policy/Json.kt
PACK_JAR := build/kotlin/pack-conformance.jar

test-kotlin: $(KOTLIN_JAR) $(PACK_JAR)
	java -jar $(KOTLIN_JAR) conformance/policy_vectors.json
	java -jar $(KOTLIN_JAR) conformance/policy_vectors_custom.json
	java -jar $(PACK_JAR) conformance/pack_vectors.json

$(KOTLIN_JAR): $(KOTLIN_SRC)
	command -v kotlinc >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq kotlin)
	mkdir -p $(dir $@) && rm -f $@
	kotlinc $(KOTLIN_SRC) -include-runtime -nowarn -d $@ 2>&1 | grep -v "^OpenJDK.*deprecated" || true
	test -f $@

$(PACK_JAR): $(PACK_SRC)
	mkdir -p $(dir $@) && rm -f $@
	kotlinc $(PACK_SRC) -include-runtime -nowarn -d $@ 2>&1 | grep -v "^OpenJDK.*deprecated" || true
	test -f $@

# The web demo: the JS policy on the shared vectors (node --test) and the page end to end in
# Debian's headless Chromium through playwright-core, on a bundle the test builds itself.
WEB_FIXTURE := web_demo/test-artifacts/fixture

test-web: install web_demo/node_modules/.installed
	command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)
	$(BIN)/python web_demo/tests/make_bundle.py $(WEB_FIXTURE)
	cd web_demo && SLIMVIT_WEB_FIXTURE=$(abspath $(WEB_FIXTURE)) node --test tests/

web_demo/node_modules/.installed: web_demo/package.json web_demo/package-lock.json
	cd web_demo && npm ci --no-audit --no-fund
	touch $@

ios-vectors:
	cp conformance/policy_vectors.json ios_demo/SlimvitPolicy/Tests/SlimvitPolicyTests/policy_vectors.json
	cp conformance/pack_vectors.json ios_demo/SlimvitPack/Tests/SlimvitPackTests/pack_vectors.json

# Refresh constraints.txt from the current, working .venv.
lock: install
	{ sed -n '1,2p' constraints.txt; $(BIN)/python -m pip freeze --exclude-editable | grep -v '^torch=='; echo '$(TORCH)'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

lint: install
	$(BIN)/ruff check .

bench: install
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf demo_out .pytest_cache
