#!/usr/bin/env bash
# Creates ./.venv (once) with PyTorch first, then this project, its test tools and the optional OpenVINO and ncnn
# runtimes (their tests skip without them; CI runs them).
# Sourced by scripts/demo.sh and scripts/test.sh; safe to run again (it skips what is already installed).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${YOLO_SLIM_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"   # installed first: a bare 'torch' would pull a multi-GB CUDA build

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV"
  "$PY" -m venv "$VENV"
fi
# shellcheck disable=SC1091
source "$VENV/bin/activate"
stamp="$VENV/.yolo-slim-installed"
want="$(cat "$ROOT/pyproject.toml" | sha256sum | cut -c1-16) $TORCH_SPEC"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[setup] installing $TORCH_SPEC, then the project with its test tools and optional runtimes (pip install -e .[dev,openvino,ncnn])"
  python -m pip install --quiet --upgrade pip
  python -m pip install --quiet "$TORCH_SPEC"
  python -m pip install --quiet -e "$ROOT[dev,openvino,ncnn]"
  echo "$want" > "$stamp"
fi
cd "$ROOT"
