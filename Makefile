# Portvagt: the two set-up commands are `make demo` and `make test` (see README.md).

.PHONY: demo test backend bench

# The reference FHIR backend's and authorization server's packages, from the committed lock files.
backend:
	cd testbed/backend && npm ci --no-audit --no-fund --loglevel=error
	cd testbed/authserver && npm ci --no-audit --no-fund --loglevel=error

# A complete local deployment: dev PKI, reference backend with sample data, gateway.
demo: backend
	cargo run --locked -p portvagt -- demo --dir demo

# Everything CI checks: formatting, lints, unit, property and end-to-end tests.
test: backend
	python3 policy/gen/patient_compartment.py --check
	cargo fmt --all -- --check
	cargo clippy --locked --workspace --all-targets -- -D warnings
	cargo test --locked --workspace

# Criterion benchmarks of the hot paths (not part of `make test`).
bench:
	cargo bench --locked --workspace
