"""Checks that template.yaml and the code agree, where a mismatch would only show after deploying:
the functions' binaries, the environment the code reads, the table's key schema and TTL, the
DynamoDB actions the store uses (granted, and nothing more), the secrets' prefix, and the SQS partial
batch response. Run by scripts/check-template.sh; exits non-zero naming each mismatch."""

import json
import pathlib
import re
import sys

from cfnlint.decode import cfn_yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
SDK_CALL_TO_ACTION = {
    "get_item": "dynamodb:GetItem",
    "put_item": "dynamodb:PutItem",
    "update_item": "dynamodb:UpdateItem",
    "delete_item": "dynamodb:DeleteItem",
    "query": "dynamodb:Query",
    "scan": "dynamodb:Scan",
    "transact_write_items": "dynamodb:TransactWriteItems",
    "batch_write_item": "dynamodb:BatchWriteItem",
    "batch_get_item": "dynamodb:BatchGetItem",
}


def main() -> int:
    template = cfn_yaml.load(str(ROOT / "template.yaml"))
    resources = template["Resources"]
    problems = []

    dynamo_rs = (ROOT / "shared/aws/src/dynamo.rs").read_text()
    consts = dict(re.findall(r'const (\w+): &str = "([^"]+)";', dynamo_rs))
    used_actions = {
        SDK_CALL_TO_ACTION[call]
        for call in re.findall(r"\.(\w+)\(\)\s*\n\s*\.table_name", dynamo_rs)
        if call in SDK_CALL_TO_ACTION
    }
    if not used_actions:
        problems.append("found no DynamoDB calls in shared/aws/src/dynamo.rs (has the code moved?)")

    # The table: keys, index and TTL as the store writes them.
    table = resources["StateTable"]["Properties"]
    keys = {k["KeyType"]: k["AttributeName"] for k in table["KeySchema"]}
    if keys != {"HASH": consts["PK"], "RANGE": consts["SK"]}:
        problems.append(f"StateTable keys {keys} != the store's pk/sk {consts['PK']}/{consts['SK']}")
    gsis = {g["IndexName"]: g for g in table.get("GlobalSecondaryIndexes", [])}
    gsi = gsis.get(consts["GSI1"])
    if gsi is None:
        problems.append(f"StateTable has no index {consts['GSI1']}")
    else:
        gkeys = {k["KeyType"]: k["AttributeName"] for k in gsi["KeySchema"]}
        if gkeys != {"HASH": consts["GSI1PK"], "RANGE": consts["GSI1SK"]}:
            problems.append(f"index {consts['GSI1']} keys {gkeys} != the store's")
        if gsi["Projection"]["ProjectionType"] != "ALL":
            problems.append("the gsi1 listing reads whole records: its projection must be ALL")
    by_order = gsis.get(consts["GSI2"])
    if by_order is None:
        problems.append(f"StateTable has no index {consts['GSI2']}")
    else:
        gkeys = {k["KeyType"]: k["AttributeName"] for k in by_order["KeySchema"]}
        if gkeys != {"HASH": consts["GSI2PK"], "RANGE": consts["GSI2SK"]}:
            problems.append(f"index {consts['GSI2']} keys {gkeys} != the store's")
        if by_order["Projection"]["ProjectionType"] != "KEYS_ONLY":
            problems.append("the gsi2 order look-up reads records by key: its projection is KEYS_ONLY")
    ttl = table.get("TimeToLiveSpecification", {})
    if ttl.get("AttributeName") != consts["TTL"] or not ttl.get("Enabled"):
        problems.append(f"StateTable TTL must be enabled on {consts['TTL']}")

    # The functions.
    bins = set()
    for cargo in (ROOT / "functions").glob("*/Cargo.toml"):
        bins |= set(re.findall(r'\[\[bin\]\]\s*name\s*=\s*"([^"]+)"', cargo.read_text()))
    sources = "".join(p.read_text() for p in (ROOT / "shared").glob("*/src/**/*.rs"))
    env = template["Globals"]["Function"]["Environment"]["Variables"]
    for name in env:
        if name != "RUST_LOG" and f'"{name}"' not in sources:
            problems.append(f"the template sets {name}, which no shared crate reads")
    for var in ("STATE_TABLE", "SECRET_PREFIX", "DEAR_BASE_URL"):
        if var not in env:
            problems.append(f"the functions read {var}; the template does not set it")
    # A function's own variables are read by the code too (TENANT_RUN_QUEUE_URL), and name a queue
    # the function may send to.
    for name, res in resources.items():
        if res.get("Type") != "AWS::Serverless::Function":
            continue
        for var in res.get("Properties", {}).get("Environment", {}).get("Variables", {}):
            if f'"{var}"' not in sources:
                problems.append(f"{name} sets {var}, which no shared crate reads")
    # Loopback URLs are for tests and development only: no deployed function may admit them.
    for name, res in resources.items():
        fn_env = res.get("Properties", {}).get("Environment", {}).get("Variables", {})
        if "DEARSYNC_ALLOW_LOOPBACK_URLS" in {**env, **fn_env}:
            problems.append(f"{name}: DEARSYNC_ALLOW_LOOPBACK_URLS must never be set in the template")

    functions = {n: r for n, r in resources.items() if r["Type"] == "AWS::Serverless::Function"}
    seen_bins = set()
    for name, fn in functions.items():
        meta = fn.get("Metadata", {})
        binary = meta.get("BuildProperties", {}).get("Binary")
        seen_bins.add(binary)
        if meta.get("BuildMethod") != "rust-cargolambda":
            problems.append(f"{name}: BuildMethod must be rust-cargolambda")
        if binary not in bins:
            problems.append(f"{name}: binary {binary!r} is not a [[bin]] of functions/*")
        granted = set()
        secret_resources = []
        for policy in fn["Properties"].get("Policies", []):
            if not isinstance(policy, dict) or "Statement" not in policy:
                problems.append(f"{name}: only inline statements are allowed (least privilege)")
                continue
            for st in policy["Statement"]:
                actions = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
                for a in actions:
                    if a.startswith("dynamodb:"):
                        granted.add(a)
                    if a == "secretsmanager:GetSecretValue":
                        secret_resources.append(st["Resource"])
                    if "*" in a:
                        problems.append(f"{name}: wildcard action {a}")
        if granted != used_actions:
            problems.append(
                f"{name}: DynamoDB actions granted {sorted(granted)} != used {sorted(used_actions)}"
            )
        if secret_resources != [
            {"Fn::Sub": "arn:${AWS::Partition}:secretsmanager:${AWS::Region}:${AWS::AccountId}:secret:${SecretPrefix}*"}
        ]:
            problems.append(f"{name}: secrets must be readable only under ${{SecretPrefix}}")
        for event_name, event in fn["Properties"].get("Events", {}).items():
            if event["Type"] == "SQS" and "ReportBatchItemFailures" not in event["Properties"].get(
                "FunctionResponseTypes", []
            ):
                problems.append(f"{name}.{event_name}: the handler answers batchItemFailures; "
                                "set FunctionResponseTypes: [ReportBatchItemFailures]")
    # A key policy granting an AWS service must say on whose behalf (confused deputy).
    for name, res in resources.items():
        if res.get("Type") != "AWS::KMS::Key":
            continue
        for st in res["Properties"]["KeyPolicy"]["Statement"]:
            if "Service" in st.get("Principal", {}) and "aws:SourceAccount" not in json.dumps(
                st.get("Condition", {})
            ):
                problems.append(f"{name}.{st.get('Sid')}: a service grant without an aws:SourceAccount condition")
    if seen_bins != bins:
        problems.append(f"functions without a template entry: {sorted(bins - seen_bins)}")
    problems.extend(check_metrics(resources))

    for p in problems:
        print(f"template.yaml: {p}", file=sys.stderr)
    return 1 if problems else 0


def emitted_metrics() -> set:
    """Every name the code puts in an EMF line: the metric and dimension names of each
    `emf_line(` call's literal ("Name", value) pairs."""
    names = set()
    for path in list((ROOT / "shared").rglob("*.rs")) + list((ROOT / "functions").rglob("*.rs")):
        text = path.read_text()
        for call in re.finditer(r"emf_line\(", text):
            window = text[call.end(): call.end() + 3000]
            names.update(re.findall(r'\(\s*"([A-Z][A-Za-z]+)",', window))
    return names


def referenced_metrics(value, found: set) -> None:
    """DearSync metric names an alarm or the dashboard reads: MetricName next to the DearSync
    namespace, Metrics Insights queries, and dashboard metric arrays."""
    if isinstance(value, dict):
        if value.get("Namespace") == "DearSync" and "MetricName" in value:
            found.add(value["MetricName"])
        for v in value.values():
            referenced_metrics(v, found)
    elif isinstance(value, list):
        if len(value) >= 2 and value[0] == "DearSync" and isinstance(value[1], str):
            found.add(value[1])
        for v in value:
            referenced_metrics(v, found)
    elif isinstance(value, str):
        for m in re.finditer(r'SELECT\s+\w+\((\w+)\)\s+FROM\s+SCHEMA\("DearSync"', value):
            found.add(m.group(1))


def check_metrics(resources) -> list:
    """Alarms and the dashboard read only metrics the code emits (a typo would alarm never)."""
    problems = []
    emitted = emitted_metrics()
    if not emitted:
        return ["found no emf_line calls in shared/ or functions/ (has the code moved?)"]
    for name, res in resources.items():
        found = set()
        if res.get("Type") == "AWS::CloudWatch::Alarm":
            referenced_metrics(res["Properties"], found)
        elif res.get("Type") == "AWS::CloudWatch::Dashboard":
            body = res["Properties"]["DashboardBody"]
            text = body["Fn::Sub"] if isinstance(body, dict) else body
            try:
                referenced_metrics(json.loads(text), found)
            except json.JSONDecodeError as e:
                problems.append(f"{name}: the dashboard body is not JSON: {e}")
        for metric in sorted(found - emitted):
            problems.append(f"{name} reads DearSync metric {metric}, which no emf_line emits")
    if not any(r.get("Type") == "AWS::CloudWatch::Dashboard" for r in resources.values()):
        problems.append("the template has no AWS::CloudWatch::Dashboard")
    return problems


if __name__ == "__main__":
    sys.exit(main())
