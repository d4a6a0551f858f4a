#!/usr/bin/env python3
"""Fails when what ships (normal and build dependencies) gains a second crypto or TLS stack, an
unused transport, or a second major version of a security-relevant crate (issue 19's review found
HTTP/3, both ring and aws-lc-rs and three rand majors). Reads `cargo tree`, so the lockfile decides.
Usage: python3 scripts/check_dependencies.py
"""

import collections
import re
import subprocess
import sys

# Never in what ships: a second crypto provider, a second TLS stack, HTTP/3.
FORBIDDEN = {"ring", "openssl", "openssl-sys", "native-tls", "quinn", "h3"}
# At most one major version each (0.x counts its minor as the major, as Cargo does).
ONE_MAJOR = {
    "aws-lc-rs", "rustls", "tokio-rustls", "rustls-webpki", "hyper", "http", "reqwest",
    "rand", "rand_core", "getrandom", "hmac", "sha2", "digest", "subtle", "uuid",
}


# What the domain crates may never import (docs/architecture.md): the Lambda runtime, an AWS SDK,
# the adapters, the handlers' kit, or another job's crate.
JOBS = ["dearsync-order-download", "dearsync-shipment-confirmation", "dearsync-inventory-sync"]
NOT_IN_DOMAIN = {"lambda_runtime", "aws_lambda_events", "aws-config", "dearsync-aws",
                 "dearsync-store-sqlite", "dearsync-function-support", "dearsync-sim", "dear-sim"}


def tree(*args: str) -> set:
    out = subprocess.run(["cargo", "tree", *args, "--prefix", "none", "--format", "{p}"],
                         check=True, capture_output=True, text=True).stdout
    return {m.group(1) for m in (re.match(r"^(\S+) v", l) for l in out.splitlines()) if m}


def import_rule_problems() -> list:
    problems = []
    for job in JOBS:
        names = tree("-p", job, "-e", "normal")
        banned = sorted(n for n in names if n in NOT_IN_DOMAIN or n.startswith("aws-sdk-")
                        or (n in JOBS and n != job))
        if banned:
            problems.append(f"{job} must not depend on {banned} (docs/architecture.md)")
    return problems


def major(version: str) -> str:
    parts = version.split(".")
    return parts[0] if parts[0] != "0" else f"0.{parts[1]}"


def main() -> int:
    out = subprocess.run(
        ["cargo", "tree", "--workspace", "--target", "all", "-e", "normal,build",
         "--prefix", "none", "--format", "{p}"],
        check=True, capture_output=True, text=True,
    ).stdout
    versions = collections.defaultdict(set)
    for line in out.splitlines():
        m = re.match(r"^(\S+) v(\S+)", line)
        if m:
            versions[m.group(1)].add(m.group(2))
    problems = [f"{name} {sorted(versions[name])} must not be a dependency"
                for name in sorted(FORBIDDEN & versions.keys())]
    for name in sorted(ONE_MAJOR & versions.keys()):
        majors = {major(v) for v in versions[name]}
        if len(majors) > 1:
            problems.append(f"{name}: {len(majors)} major versions {sorted(versions[name])}; "
                            f"align the dependents (cargo tree -i {name})")
    problems += import_rule_problems()
    for p in problems:
        print(f"dependencies: {p}", file=sys.stderr)
    if not problems:
        print(f"dependencies: {len(versions)} crates ship; one crypto provider, no HTTP/3, "
              "one major of each security-relevant crate; the job crates import no runtime, SDK, "
              "adapter or other job")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
