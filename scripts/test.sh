#!/usr/bin/env bash
# The project's one test command: installs what the tests need, then runs every test.
# Usage: bash scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
rustup component add rustfmt clippy >/dev/null 2>&1 || true
cargo test --workspace --all-targets
