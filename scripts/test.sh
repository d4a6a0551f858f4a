#!/usr/bin/env bash
# The project's one test command: installs what the tests need, then runs every test.
# Usage: bash scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
rustup component add rustfmt clippy >/dev/null 2>&1 || true
# The AWS emulator (moto's server mode). The tests start and stop it themselves on a free port on
# 127.0.0.1 (see shared/aws/src/testing.rs); set DEARSYNC_AWS_ENDPOINT to use one already running.
python3 -m pip install --quiet --disable-pip-version-check -r scripts/requirements-test.txt
command -v moto_server >/dev/null || { echo "moto_server is not on PATH after pip install" >&2; exit 1; }
cargo test --workspace --all-targets
