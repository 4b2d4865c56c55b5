"""Every bench/ script answers --help with its usage and writes nothing: no result, no docs page, no README."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
SCRIPTS = sorted(p.name for p in BENCH.glob("*.py") if p.name != "common.py")  # common.py is the scripts' library

# One interpreter for all the scripts (each would otherwise import torch again): every script is run as __main__
# with --help, its exit code and output collected. bench/ goes last on the path so bench/sparsity.py does not
# shadow the sparsity package.
DRIVER = """
import contextlib, io, json, runpy, sys
sys.path.append(sys.argv[1])
out = {}
for script in sys.argv[2:]:
    sys.argv = [script, "--help"]
    buf = io.StringIO()
    code = None
    try:
        with contextlib.redirect_stdout(buf):
            runpy.run_path(script, run_name="__main__")
    except SystemExit as e:
        code = e.code
    except Exception as e:
        code = repr(e)
    out[script] = {"code": code, "stdout": buf.getvalue()}
print(json.dumps(out))
"""


def _tree(*roots: Path) -> dict[str, int]:
    """Every file under the roots (bytecode caches aside) with its modification time."""
    seen = {}
    for root in roots:
        if root.is_file():
            seen[str(root)] = root.stat().st_mtime_ns
        for folder, dirs, files in os.walk(root) if root.is_dir() else ():
            dirs[:] = [d for d in dirs if d != "__pycache__"]
            seen.update({os.path.join(folder, f): os.stat(os.path.join(folder, f)).st_mtime_ns for f in files})
    return seen


def test_every_bench_script_answers_help_without_writing() -> None:
    assert {"helmets.py", "helmets_seeds.py", "latency.py", "readme.py", "recovery.py"} <= set(SCRIPTS)
    watched = (BENCH, REPO / "docs", REPO / "README.md", REPO / "runs")
    before = _tree(*watched)
    proc = subprocess.run([sys.executable, "-c", DRIVER, str(BENCH), *(str(BENCH / s) for s in SCRIPTS)],
                          capture_output=True, text=True, timeout=240, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    answers = json.loads(proc.stdout.strip().splitlines()[-1])
    failed = {Path(s).name: a["code"] for s, a in answers.items() if a["code"] != 0 or "usage:" not in a["stdout"]}
    assert failed == {}
    assert _tree(*watched) == before
