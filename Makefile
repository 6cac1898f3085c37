# Portvagt: the two set-up commands are `make demo` and `make test` (see README.md).

.PHONY: demo conformance test backend fhir-examples chart browser bench compat build-packages test-packages deny-tool supply-chain advisories

# Debian packages, installed only when missing. Building needs OpenSSL's headers (the openssl
# crate verifies SAML signatures); the tests also run libxmlsec1's `xmlsec1` (an independent
# check of our XML signatures), a real Redis (the shared replay cache) and Chromium (the citizen
# page's browser test, driven by playwright-core: no browser download).
BUILD_PACKAGES := libssl-dev pkg-config
TEST_PACKAGES := $(BUILD_PACKAGES) xmlsec1 redis-server chromium
APT_INSTALL = missing=$$(for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		echo "installing Debian packages:" $$missing; \
		$$sudo apt-get update -qq && $$sudo apt-get install -y -qq --no-install-recommends $$missing; \
	fi

build-packages:
	@$(call APT_INSTALL,$(BUILD_PACKAGES))

test-packages:
	@$(call APT_INSTALL,$(TEST_PACKAGES))

# The reference FHIR backend's, authorization server's and browser test's packages, from the
# committed lock files.
backend:
	cd testbed/backend && npm ci --no-audit --no-fund --loglevel=error
	cd testbed/authserver && npm ci --no-audit --no-fund --loglevel=error
	cd testbed/browser && npm ci --no-audit --no-fund --loglevel=error

# The R4 specification's 5,300 example resources, for the FHIR XML round-trip tests (tests only).
fhir-examples:
	cd testbed/fhir-examples && npm ci --no-audit --no-fund --loglevel=error

# The citizen's access-log page in headless Chromium, against `portvagt demo`.
browser:
	cargo build --locked -p portvagt
	node testbed/browser/minlog.test.mjs

# Portvagt in front of a second real FHIR server, the Helios FHIR Server: built once into
# .cache/compat (long, so not part of `test`), seeded with the sample data, and the end-to-end
# modules that make sense against any server run against it (compat/run.py).
compat: test-packages backend
	python3 compat/run.py

# The Helm chart (helm/portvagt): lint, render with several values files, Kubernetes schemas,
# checkov. Its Python tools are installed into helm/.venv on first use (pinned in
# helm/tests/requirements.txt); no cluster, no helm binary and no container runtime are needed.
chart:
	python3 helm/tests/test_chart.py

# Supply chain (deny.toml): licenses, duplicate versions, sources; offline. cargo-deny is
# installed on first use, at a pinned version.
CARGO_DENY_VERSION := 0.20.2
deny-tool:
	@cargo deny --version 2>/dev/null | grep -q "$(CARGO_DENY_VERSION)" || \
		cargo install --locked cargo-deny --version $(CARGO_DENY_VERSION)

supply-chain: deny-tool
	cargo deny --locked check licenses bans sources

# Known vulnerabilities: needs the RustSec advisory database (downloaded), so not in `make test`.
advisories: deny-tool
	cargo deny --locked check advisories

# A complete local deployment: dev PKI, reference backend with sample data, gateway.
demo: build-packages backend
	cargo run --locked -p portvagt -- demo --dir demo $(if $(PORT),--port $(PORT))

# The conformance suite against the running `make demo` (start it in another shell first), every
# token, certificate and SOSI card made from the demo's files; the reports go to
# $(DEMO_DIR)/conformance/.
DEMO_DIR ?= demo
conformance: build-packages
	cargo run --locked -p portvagt-conformance -- --demo $(DEMO_DIR)

# Everything CI checks: formatting, lints, unit, property, end-to-end and browser tests.
test: test-packages backend fhir-examples chart supply-chain
	python3 policy/gen/patient_compartment.py --check
	cargo fmt --all -- --check
	cargo clippy --locked --workspace --all-targets -- -D warnings
	cargo test --locked --workspace
	$(MAKE) --no-print-directory browser

# Criterion benchmarks of the hot paths (not part of `make test`).
bench: build-packages
	cargo bench --locked --workspace
