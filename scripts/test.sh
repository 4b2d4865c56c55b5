#!/usr/bin/env bash
# Runs the test suite (fast tests plus tiny end-to-end pipeline runs). Extra arguments go to pytest.
# It installs the optional OpenVINO and ncnn runtimes too (.[dev,openvino,ncnn], about a minute more), so their
# exporters and backends are tested; YOLO_SLIM_EXTRAS=0 bash scripts/test.sh tests without them (they skip).
set -euo pipefail
export YOLO_SLIM_EXTRAS="${YOLO_SLIM_EXTRAS:-1}"
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
ruff check .
exec python -m pytest "$@"
