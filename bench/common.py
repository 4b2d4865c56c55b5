"""What every benchmark records beside its figures: the exact command, the machine and the versions."""

from __future__ import annotations

import datetime as _dt
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
SHARED = Path(os.environ.get("YOLO_SLIM_SHARED", REPO.parent / "shared"))
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def command_line() -> str:
    return "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0], REPO), *sys.argv[1:]])


def machine() -> dict[str, Any]:
    from reports.latency import environment

    env = environment()
    env["load_average"] = [round(x, 2) for x in os.getloadavg()]
    try:
        import torch_pruning

        env["torch_pruning"] = torch_pruning.__version__
    except ImportError:
        pass
    return env


def cpu_isa(cpu: dict) -> str | None:
    """AVX-512, AVX2 or None, from a recorded machine's cpu flags: the kernels (and so seeded runs) differ."""
    flags = set(cpu.get("flags") or ())
    return "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else None


def write_result(name: str, figures: dict[str, Any], markdown: str, out_dir: Path | None = None) -> Path:
    """bench/results/<name>.json (command, machine, figures) and <name>.md (the README table).

    `out_dir` writes elsewhere (smoke tests must not overwrite the committed results).
    """
    from yolo.fileio import atomic_write_text

    results = Path(out_dir) if out_dir is not None else RESULTS
    results.mkdir(parents=True, exist_ok=True)
    doc = {
        "name": name,
        "command": command_line(),
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "machine": machine(),
        "figures": figures,
    }
    atomic_write_text(results / f"{name}.json", json.dumps(doc, indent=2, default=str) + "\n")
    atomic_write_text(results / f"{name}.md", markdown.rstrip() + f"\n\n`{doc['command']}`\n")
    return results / f"{name}.json"


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    """A Markdown table; cells are written as given (format numbers before)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def need_shared() -> Path:
    if not (SHARED / "weights" / "yolov5n.pt").is_file():
        sys.exit(f"this benchmark needs {SHARED} (the shared weights and datasets)")
    return SHARED
