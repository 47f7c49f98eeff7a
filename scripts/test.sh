#!/bin/sh
# The whole test suite, end-to-end tests included, plus the linter.
set -eu
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh
.venv/bin/ruff check klpcc tests bench ansible
exec .venv/bin/python -m pytest -q "$@"
