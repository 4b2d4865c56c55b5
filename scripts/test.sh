#!/usr/bin/env bash
# Runs the test suite (fast tests plus one tiny end-to-end pipeline run). Extra arguments go to pytest.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
ruff check .
exec python -m pytest "$@"
