#!/usr/bin/env bash
# Roost's whole test suite: the function runtime's tests (Python, stdlib unittest), then
# every Rust test in the workspace (unit tests, and integration tests against the real
# Envoy, Redis, nginx and Docker). Needs what scripts/install-deps.sh installs.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m unittest discover -s faas-runtime/tests -t faas-runtime
cargo test --workspace --locked
