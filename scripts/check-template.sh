#!/usr/bin/env bash
# Checks template.yaml offline: CloudFormation's linter, then SAM's own validation with its linter,
# the template against the code, and checkov's security checks of the SAM-translated template.
# (None needs AWS credentials; the region only picks the resource specification to check against.)
set -euo pipefail
cd "$(dirname "$0")/.."
cfn-lint template.yaml
SAM_CLI_TELEMETRY=0 sam validate --lint --region us-east-1 --template-file template.yaml
python3 scripts/check_template_matches_code.py
bash scripts/checkov.sh
