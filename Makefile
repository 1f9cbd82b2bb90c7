# slimvit: `make demo` and `make test` each set everything up on a fresh machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# torch 2.13.0 CPU is pinned first: pip takes it from local disk; an unpinned torch pulls a
# multi-GB CUDA build.
TORCH := torch==2.13.0

.PHONY: install demo test test-py test-kotlin ios-vectors lint clean bench

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: install
	$(BIN)/slimvit demo --out demo_out

test: test-py test-kotlin

test-py: install
	$(BIN)/python -m pytest -q tests

# The Android app's pure policy module, compiled with Debian's kotlinc and run on the JVM
# against the shared conformance vectors.
KOTLIN_SRC := $(wildcard android_demo/policy/src/main/kotlin/dev/slimvit/policy/*.kt) \
	android_demo/policy/src/test/kotlin/dev/slimvit/policy/Conformance.kt
KOTLIN_JAR := build/kotlin/policy-conformance.jar

test-kotlin: $(KOTLIN_JAR)
	java -jar $(KOTLIN_JAR) conformance/policy_vectors.json
	java -jar $(KOTLIN_JAR) conformance/policy_vectors_custom.json

$(KOTLIN_JAR): $(KOTLIN_SRC)
	command -v kotlinc >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq kotlin)
	mkdir -p $(dir $@) && rm -f $@
	kotlinc $(KOTLIN_SRC) -include-runtime -nowarn -d $@ 2>&1 | grep -v "^OpenJDK.*deprecated" || true
	test -f $@

ios-vectors:
	cp conformance/policy_vectors.json ios_demo/SlimvitPolicy/Tests/SlimvitPolicyTests/policy_vectors.json

lint: install
	$(BIN)/ruff check .

bench: install
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf demo_out .pytest_cache
