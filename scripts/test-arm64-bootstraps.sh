#!/usr/bin/env bash
# Builds the three Lambda bootstraps as shipped (cargo lambda build --release --arm64) and runs the
# runtime-emulator tests (tests/lambda_emulator.rs) against them under qemu-user, so the artifacts
# themselves are tried, not only the debug builds. Not part of scripts/test.sh: the release build
# takes minutes. Needs Debian's qemu-user-static and libc6-arm64-cross (installed here if missing).
# Usage: bash scripts/test-arm64-bootstraps.sh
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check -r scripts/requirements-test.txt ziglang==0.17.1
if ! command -v qemu-aarch64-static >/dev/null || [ ! -e /usr/aarch64-linux-gnu/lib/libc.so.6 ]; then
  apt-get install -y qemu-user-static libc6-arm64-cross >/dev/null \
    || { apt-get update >/dev/null && apt-get install -y qemu-user-static libc6-arm64-cross >/dev/null; }
fi
# The release build may use its own target folder (LAMBDA_TARGET_DIR) to keep the debug one warm.
target=${LAMBDA_TARGET_DIR:-${CARGO_TARGET_DIR:-target}}
CARGO_TARGET_DIR="$target" cargo lambda build --release --arm64 --output-format zip \
  -p order-download -p shipment-confirmation -p inventory-sync
wrappers=$(mktemp -d)
trap 'rm -rf "$wrappers"' EXIT
for f in order-download shipment-confirmation inventory-sync; do
  bootstrap="$(cd "$target/lambda/$f" && pwd)/bootstrap"
  printf '#!/bin/sh\nexec qemu-aarch64-static -L /usr/aarch64-linux-gnu %s "$@"\n' "$bootstrap" > "$wrappers/$f"
  chmod +x "$wrappers/$f"
  ls -l "$target/lambda/$f/bootstrap.zip"
  # provided.al2023 has glibc 2.34: the bootstrap must not need a newer symbol version.
  newest=$(readelf -V "$bootstrap" | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -1)
  if [ "$(printf '%s\nGLIBC_2.34\n' "$newest" | sort -V | tail -1)" != "GLIBC_2.34" ]; then
    echo "$f needs $newest; provided.al2023 has GLIBC_2.34" >&2
    exit 1
  fi
  echo "$f: newest glibc symbol $newest (al2023: 2.34)"
done
DEARSYNC_FUNCTIONS_DIR="$wrappers" cargo test --test lambda_emulator
