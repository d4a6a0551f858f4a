#!/usr/bin/env bash
# The project's one test command: installs what the tests need, checks the SAM template, then runs
# every test. Usage: bash scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
rustup component add rustfmt clippy >/dev/null 2>&1 || true
# The AWS emulator (moto's server mode), the Lambda runtime emulator (cargo-lambda) and the template
# linters. The tests start and stop the emulators themselves on free ports on 127.0.0.1 (see
# shared/aws/src/testing.rs and tests/lambda_emulator.rs); set DEARSYNC_AWS_ENDPOINT to use an AWS
# emulator already running.
python3 -m pip install --quiet --disable-pip-version-check -r scripts/requirements-test.txt
for tool in moto_server cargo-lambda cfn-lint sam checkov; do
  command -v "$tool" >/dev/null || { echo "$tool is not on PATH after pip install" >&2; exit 1; }
done
bash scripts/check-template.sh
python3 scripts/check_dependencies.py
cargo test --workspace --all-targets
