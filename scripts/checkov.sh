#!/usr/bin/env bash
# Scans the template with checkov as CloudFormation sees it: SAM-translated offline (samtranslator,
# installed with aws-sam-cli), so the generated functions, roles, Function URLs and event invoke
# configs are what gets checked. Fails on any failed check. No AWS credentials or network needed.
# Usage: bash scripts/checkov.sh [template] (default template.yaml)
#
# Findings are fixed in template.yaml or suppressed there, each with its reason, under a resource's
# Metadata.checkov.skip. A SAM resource's Metadata is passed through to the resources generated from
# it (passthrough_metadata), so a suppression on a function also reaches its URL and invoke config.
# A suppression without a comment saying why fails the scan.
set -euo pipefail
template=$(realpath "${1:-$(dirname "$0")/../template.yaml}")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The region only fills pseudo parameters such as AWS::Region in the translation; nothing is called.
AWS_DEFAULT_REGION=us-east-1 AWS_REGION=us-east-1 python3 - "$template" "$work/template.json" <<'EOF'
import json
import sys

from samtranslator.translator.transform import transform
from samtranslator.yaml_helper import yaml_parse


class NoManagedPolicies:
    """Policies are inline statements only (least privilege): no managed policy to look up in IAM."""

    def load(self):
        return {}


with open(sys.argv[1]) as f:
    sam = yaml_parse(f.read())
unexplained = [
    f"{name}: {skip.get('id')}"
    for name, resource in sam["Resources"].items()
    for skip in resource.get("Metadata", {}).get("checkov", {}).get("skip", [])
    if not str(skip.get("comment", "")).strip()
]
if unexplained:
    sys.exit("checkov suppressions without a comment saying why: " + ", ".join(unexplained))
# As `sam validate` does: a local CodeUri stands for the S3 object `sam deploy` uploads it to.
for resource in sam["Resources"].values():
    code_uri = resource.get("Properties", {}).get("CodeUri")
    if isinstance(code_uri, str) and not code_uri.startswith("s3://"):
        resource["Properties"]["CodeUri"] = f"s3://sam-deploy-uploads/{code_uri}"
cfn = transform(sam, {}, NoManagedPolicies(), passthrough_metadata=True)
with open(sys.argv[2], "w") as f:
    json.dump(cfn, f, indent=1)
EOF

# --skip-download, BC_SKIP_MAPPING: no platform calls; CKV_SKIP_PACKAGE_UPDATE_CHECK: no PyPI call.
# Run from the temporary directory: findings name template.json, and no .checkov.yaml is picked up.
cd "$work"
BC_SKIP_MAPPING=TRUE CKV_SKIP_PACKAGE_UPDATE_CHECK=true \
  checkov -f template.json --framework cloudformation --compact --quiet --skip-download
