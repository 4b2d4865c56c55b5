"""What every benchmark records beside its figures: the exact command, the machine and the versions.

Layout of bench/results/: one `<question>.json` (+ `.md`, the table) per question. A question asked by several
runs (helmets recipes and seeds, latency by --round-to, the recovery runs) keeps each run's raw record under
`<question>_runs/`, and its table is collected from them; docs/results.md is rendered from the tables
(bench/readme.py).
"""

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
RUNS_SUFFIX = "_runs"  # <question>_runs/: the raw per-run records a question's table is collected from
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


def record_cpu(doc: dict) -> dict:
    """A record's cpu as a dict (the oldest records hold the model name only)."""
    cpu = doc.get("machine", {}).get("cpu", {})
    if isinstance(cpu, str):
        cpu = {"model": cpu, "logical_cores": doc["machine"].get("logical_cores")}
    return cpu


def record_host(doc: dict) -> str:
    """'AMD EPYC (AVX-512), 2 cores': which kind of CPU a record was measured on."""
    cpu = record_cpu(doc)
    isa = cpu_isa(cpu)
    parts = [(cpu.get("model") or "unknown CPU") + (f" ({isa})" if isa else "")]
    if cpu.get("logical_cores"):
        parts.append(f"{cpu['logical_cores']} cores")
    return ", ".join(parts)


def runs_dir(question: str, results: Path = RESULTS) -> Path:
    """bench/results/<question>_runs/: where the raw records of a question's runs are kept."""
    return Path(results) / f"{question}{RUNS_SUFFIX}"


def read_records(folder: Path) -> list[tuple[Path, dict]]:
    """Every JSON record in a folder, by file name; a file that is not JSON stops with one line naming it."""
    records = []
    for path in sorted(Path(folder).glob("*.json")):
        try:
            records.append((path, json.loads(path.read_text())))
        except ValueError as e:
            sys.exit(f"{path}: not a JSON record ({e})")
    return records


def source_of(path: Path, doc: dict, results: Path = RESULTS) -> dict[str, Any]:
    """How a collected table names one of its run records: file, date, host and command."""
    try:
        file = str(Path(path).relative_to(results))
    except ValueError:
        file = Path(path).name
    return {"file": file, "date": str(doc.get("date", ""))[:10], "host": record_host(doc),
            "command": doc.get("command", "")}


def write_json(path: Path, doc: Any) -> Path:
    """A JSON record written atomically (a run's record, or a benchmark's own bookkeeping)."""
    from yolo.fileio import atomic_write_text

    return atomic_write_text(path, json.dumps(doc, indent=2, default=str) + "\n")


def write_result(name: str, figures: dict[str, Any], markdown: str, out_dir: Path | None = None,
                 command: str | None = None) -> Path:
    """bench/results/<name>.json (command, machine, figures) and <name>.md (the table, the command under it).

    `out_dir` writes elsewhere (a run's raw record under <question>_runs/; smoke tests must not overwrite the
    committed results). `command` is the one that rewrites this very file, when it is not the running one (a
    table re-collected at the end of a run is rewritten by its collecting command).
    """
    from yolo.fileio import atomic_write_text

    results = Path(out_dir) if out_dir is not None else RESULTS
    results.mkdir(parents=True, exist_ok=True)
    doc = {
        "name": name,
        "command": command or command_line(),
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "machine": machine(),
        "figures": figures,
    }
    write_json(results / f"{name}.json", doc)
    atomic_write_text(results / f"{name}.md", markdown.rstrip() + f"\n\n`{doc['command']}`\n")
    return results / f"{name}.json"


def write_attachment(source: Path, name: str, out_dir: Path | None = None) -> Path:
    """Copy a file a table shows (a plot) into bench/results/, whole or not at all."""
    from yolo.fileio import atomic_write_bytes

    target = (Path(out_dir) if out_dir is not None else RESULTS) / name
    with open(source, "rb") as f:
        atomic_write_bytes(target, f.read())
    return target


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    """A Markdown table; cells are written as given (format numbers before)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def need_shared() -> Path:
    if not (SHARED / "weights" / "yolov5n.pt").is_file():
        sys.exit(f"this benchmark needs {SHARED} (the shared weights and datasets)")
    return SHARED
