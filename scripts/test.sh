#!/usr/bin/env bash
# Runs the whole test suite: lint, unit tests, and the tests that load the real BPF program into the running
# kernel and start real containers. Needs root. Installs what it needs first (scripts/install.sh --test).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
  echo "test.sh: run as root (sudo scripts/test.sh): the tests load BPF programs and start containers" >&2
  exit 1
fi
scripts/install.sh --test
.venv/bin/ruff check sensor tests scripts
exec .venv/bin/python -m pytest -ra "$@"
