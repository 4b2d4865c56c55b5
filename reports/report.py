"""The run report: report.json (versioned schema), report.md, PNG plots and a rich table in the terminal.

    entries = [ModelEntry.measure("baseline", model, pt_path=..., onnx_path=...), ...]
    write_report(run_dir, entries, args=vars(args), extras={"sweep": [...], "images": [...]})

Rows are compared with the first entry whose role is 'baseline' (else the first entry): every size, speed
and accuracy column gets a ratio (or a difference, for mAP) to it.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from reports import plots
from reports.choice import describe, fastest_holding
from reports.export import check_out_dir
from reports.latency import environment, package_versions
from reports.runtime_common import files_size_mb
from yolo.fileio import atomic_write_text, plain
from yolo.flops import count_gflops, count_params

SCHEMA = "yolov5-slim.report/1"
ROLE_ORDER = ("baseline", "pruned", "finetuned", "int8")


@dataclass
class ModelEntry:
    """One model of the report. `latency` maps a setting ('onnxruntime 1 thread') to {median_ms, p90_ms, ...};
    `metrics` is what yolo.val.evaluate returns (map50, map, precision, recall, per_class, evaluator)."""

    role: str
    path: str | None = None
    onnx_path: str | None = None
    params: int | None = None
    gflops: float | None = None
    pt_mb: float | None = None
    onnx_mb: float | None = None
    latency: dict[str, dict[str, float]] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    imgsz: int | list[int] | None = None
    notes: dict[str, Any] = field(default_factory=dict)
    model: Any = field(default=None, repr=False, compare=False)  # nn.Module for plots; not serialised

    @classmethod
    def measure(
        cls,
        role: str,
        model: Any = None,
        pt_path: str | Path | None = None,
        onnx_path: str | Path | None = None,
        imgsz: int = 640,
        **kw: Any,
    ) -> ModelEntry:
        """Sizes filled in from the module (params, GFLOPs at imgsz) and the files that exist."""
        e = cls(
            role=role,
            path=str(pt_path) if pt_path else None,
            onnx_path=str(onnx_path) if onnx_path else None,
            imgsz=imgsz,
            model=model,
            **kw,
        )
        if model is not None:

            e.params = e.params if e.params is not None else count_params(model)
            e.gflops = e.gflops if e.gflops is not None else count_gflops(model, imgsz)
        if pt_path and Path(pt_path).is_file():
            e.pt_mb = os.path.getsize(pt_path) / 1e6
        if onnx_path and Path(onnx_path).exists():
            e.onnx_mb = files_size_mb(onnx_path)  # .xml / .param count their .bin too
        return e

    @property
    def main_latency(self) -> dict[str, float] | None:
        """The first single-thread setting if any, else the first setting."""
        if not self.latency:
            return None
        for k, v in self.latency.items():
            if "1 thread" in k or k.endswith("-1") or k == "1":
                return v
        return next(iter(self.latency.values()))

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "model"}
        return plain(d, for_json=True)


def _baseline(entries: Sequence[ModelEntry]) -> ModelEntry | None:
    return next((e for e in entries if e.role == "baseline"), entries[0] if entries else None)


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not b:
        return None
    return a / b


def comparisons(entries: Sequence[ModelEntry]) -> list[dict[str, Any]]:
    """Per entry: the ratios (time, size) and differences (mAP) to the baseline."""
    base = _baseline(entries)
    rows = []
    for e in entries:
        bl, el = (base.main_latency or {}) if base else {}, e.main_latency or {}
        bm, em = (base.metrics if base else {}), e.metrics
        rows.append(
            {
                "role": e.role,
                "params_ratio": _ratio(e.params, base.params if base else None),
                "gflops_ratio": _ratio(e.gflops, base.gflops if base else None),
                "pt_mb_ratio": _ratio(e.pt_mb, base.pt_mb if base else None),
                "onnx_mb_ratio": _ratio(e.onnx_mb, base.onnx_mb if base else None),
                "latency_ratio": _ratio(el.get("median_ms"), bl.get("median_ms")),
                "speedup": _ratio(bl.get("median_ms"), el.get("median_ms")),
                "map50_diff": None if em.get("map50") is None or bm.get("map50") is None else em["map50"] - bm["map50"],
                "map_diff": None if em.get("map") is None or bm.get("map") is None else em["map"] - bm["map"],
            }
        )
    return rows


# ------------------------------------------------------------------------------------------- text


def _fmt(v: Any, spec: str = "") -> str:
    if v is None:
        return "-"
    return format(v, spec) if spec else str(v)


def _x(v: float | None, base: bool, sep: str = " ") -> str:
    return "" if v is None or base else f"{sep}{v:.2f}x"


def _d(v: float | None, base: bool, sep: str = " ") -> str:
    return "" if v is None or base else f"{sep}{v:+.3f}"


def table_rows(entries: Sequence[ModelEntry], p90: bool = True, sep: str = " ") -> tuple[list[str], list[list[str]]]:
    """Header and rows: absolute values, then the ratio (x) or difference (+/-) to the baseline."""
    header = ["model", "params", "GFLOPs", ".pt MB", ".onnx MB", "runtime", "ms", "speed-up", "mAP50", "mAP50-95"]
    base = _baseline(entries)
    rows = []
    for e, c in zip(entries, comparisons(entries)):
        lat = e.main_latency or {}
        b = e is base
        ms = _fmt(lat.get("median_ms"), ".1f")
        if p90 and lat.get("p90_ms"):
            ms += f"{sep}(p90 {lat['p90_ms']:.1f})"
        rows.append(
            [
                e.role,
                (f"{e.params / 1e6:.2f}M" if e.params else "-") + _x(c["params_ratio"], b, sep),
                _fmt(e.gflops, ".2f") + _x(c["gflops_ratio"], b, sep),
                _fmt(e.pt_mb, ".1f") + _x(c["pt_mb_ratio"], b, sep),
                _fmt(e.onnx_mb, ".1f") + _x(c["onnx_mb_ratio"], b, sep),
                _runtime_cell(lat, sep),
                ms,
                _fmt(c["speedup"], ".2f") + ("x" if c["speedup"] else ""),
                _fmt(e.metrics.get("map50"), ".3f") + _d(c["map50_diff"], b, sep),
                _fmt(e.metrics.get("map"), ".3f") + _d(c["map_diff"], b, sep),
            ]
        )
    return header, rows


def _runtime_cell(lat: Mapping[str, Any], sep: str = " ") -> str:
    """'openvino 2026.4.1, 1 thread': what produced the row's latency, and with how many threads."""
    if not lat.get("runtime"):
        return "-"
    n = lat.get("threads")
    return lat["runtime"] + ("" if n is None else f",{sep}{n} thread{'s' if n != 1 else ''}")


def print_table(entries: Sequence[ModelEntry], console=None, title: str = "yolov5-slim report") -> None:

    header, rows = table_rows(entries, p90=False, sep="\n")
    lat = next((k for e in entries for k in e.latency if (e.main_latency is e.latency[k])), None)

    caption = f"ms: median, {lat}; ratios and mAP differences vs the baseline" if lat else None
    chosen = describe(fastest_holding(entries))
    if chosen:
        caption = f"{caption}\n{chosen}" if caption else chosen
    t = Table(title=title, caption=caption, box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for i, h in enumerate(header):
        h = h.replace(" ", "\n", 1).replace("-", "-\n", 1) if i else h
        width = max(len(line) for cell in [h, *(r[i] for r in rows)] for line in cell.split("\n"))
        t.add_column(h, justify="left" if i == 0 else "right", no_wrap=True, min_width=width)
    for r in rows:
        t.add_row(*r)
    (console or _console()).print(t)


def _console() -> Console:
    """A terminal's own width; 200 columns when the output is piped to a file (rich would crop it at 80)."""
    return Console() if sys.stdout.isatty() else Console(width=200)


def _map_source(entries: Sequence[ModelEntry]) -> str:
    evaluators = sorted({str(e.metrics.get("evaluator", "-")) for e in entries if e.metrics})
    return "mAP from " + ", ".join(evaluators) if evaluators else "no mAP (no --data given)"


def no_box_flags(entries: Sequence[ModelEntry]) -> list[tuple[str, str]]:
    """(role, message) for each model that finds no box on the check images where the baseline finds some."""
    base = _baseline(entries)
    found = (base.notes.get("boxes") or {}).get("boxes", 0) if base else 0
    out = []
    for e in entries:
        mine = e.notes.get("boxes")
        if e is not base and found and mine and mine["boxes"] == 0:
            out.append((e.role, f"finds no boxes on the {mine['images']} check image(s) at conf "
                                f"{mine['conf_thres']:g}, where the baseline finds {found}"))  # fmt: skip
    return out


def markdown(report: dict[str, Any], entries: Sequence[ModelEntry], plot_files: Sequence[Path]) -> str:
    env = report["environment"]
    cpu = env.get("cpu", {})
    header, rows = table_rows(entries)
    lines = [
        "# yolov5-slim report",
        "",
        f"Created {report['created']} with schema `{SCHEMA}`.",
        "",
        "## Models",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *["| " + " | ".join(r) + " |" for r in rows],
        "",
        "Ratios are to the baseline; latency is the median of interleaved runs (see `report.json` for every "
        "setting); " + _map_source(entries) + ".",
        "",
        *[f"**{line}**" for line in [describe(report.get("fastest"))] if line],
        *[f"- {role}: **{flag}**" for role, flag in no_box_flags(entries)],
        *[f"- {e.role}: evaluated with {e.notes['evaluated_with']}" for e in entries if e.notes.get("evaluated_with")],
        *[f"- {e.role}: **ONNX parity check failed** ({'; '.join(e.notes['parity']['failures'])})"
          for e in entries if e.notes.get("parity", {}).get("passed") is False],
        *[f"- {e.role}: not scored ({e.notes['not_scored']})" for e in entries if e.notes.get("not_scored")],
        "",
        "## Environment",
        "",
        f"- CPU: {cpu.get('model')} ({cpu.get('usable_cores')} usable cores; flags {', '.join(cpu.get('flags', []))})",
        f"- python {env.get('python')}, torch {env.get('torch')}, onnxruntime {env.get('onnxruntime')}, "
        f"onnx {env.get('onnx')}",
        "",
    ]
    lat_rows = [(e.role, k, v) for e in entries for k, v in e.latency.items()]
    if lat_rows:
        lines += ["## Latency", "", "| model | setting | runtime | median ms | p90 ms | runs |", "|---" * 6 + "|"]
        lines += [
            f"| {r} | {k} | {_runtime_cell(v)} | {_fmt(v.get('median_ms'), '.2f')} | {_fmt(v.get('p90_ms'), '.2f')} "
            f"| {_fmt(v.get('runs'))} |"
            for r, k, v in lat_rows
        ]
        lines.append("")
    lines += budget_lines((report.get("extras") or {}).get("latency_budget"), entries)
    if report.get("arguments"):
        lines += ["## Arguments", "", "```json", json.dumps(report["arguments"], indent=2, default=str), "```", ""]
    if plot_files:
        lines += ["## Plots", ""]
        lines += [f"![{p.stem}]({p.name})" for p in plot_files]
        lines.append("")
    return "\n".join(lines)


def budget_lines(budget: Mapping[str, Any] | None, entries: Sequence[ModelEntry]) -> list[str]:
    """A latency-targeted run's budget, the table's prediction and the prune stage's timing, then this report's
    own timing of the pruned models. The two timings are minutes apart and a VM's pace drifts, so the report's is
    also given at the pace of the cut (scaled by the baseline timed beside each: both are interleaved)."""
    if not budget or "budget_ms" not in budget:
        return []
    target = budget.get("target_ms")
    asked = budget.get("request") or f"{target or budget['budget_ms']:.2f} ms"
    within = "within" if budget.get("within_tolerance") else "outside"
    lines = ["## Latency budget", "",
             f"- asked: {asked}; predicted by the latency table: {budget['predicted_ms']:.2f} ms",
             f"- measured when cut: {budget['measured_ms']:.2f} ms against {budget['budget_ms']:.2f} ms at that "
             f"moment's pace ({budget['error_pct']:+.1f}%, {within} the {budget.get('tolerance_pct', 5):g}% "
             f"tolerance; baseline {budget['measured_before_ms']:.2f} ms beside it)"]  # fmt: skip
    setting = f"onnxruntime {budget.get('threads', 1)} thread"
    base = next((e.latency.get(setting) for e in entries if e.role == "baseline"), None)
    for e in entries:
        mine = e.latency.get(setting)
        if e.role == "baseline" or not mine or not base:
            continue
        at_cut = mine["median_ms"] * budget["measured_before_ms"] / base["median_ms"]
        lines.append(f"- {e.role}, timed in this report: {mine['median_ms']:.2f} ms beside the baseline's "
                     f"{base['median_ms']:.2f} ms; {at_cut:.2f} ms at the pace of the cut")
    return [*lines, ""]


# ------------------------------------------------------------------------------------------- entry point


def write_report(
    run_dir: str | Path,
    entries: Sequence[ModelEntry],
    args: Mapping[str, Any] | None = None,
    extras: Mapping[str, Any] | None = None,
    console=None,
    print_summary: bool = True,
) -> dict[str, Path]:
    """Write report.json, report.md and the plots into `run_dir`; print the rich table. Returns the paths."""

    if not entries:
        raise ValueError("a report needs at least one model entry")
    order = {r: i for i, r in enumerate(ROLE_ORDER)}
    entries = sorted(entries, key=lambda e: order.get(e.role, len(order)))
    run_dir = check_out_dir(Path(run_dir))
    extras = dict(extras or {})
    plot_files = plots.report_plots(run_dir, entries, extras, _baseline(entries))
    env = environment()
    report = {
        "schema": SCHEMA,
        "created": _dt.datetime.now().isoformat(timespec="seconds"),
        "arguments": plain(dict(args or {}), for_json=True),
        "environment": env,
        "packages": package_versions(),
        "baseline": (_baseline(entries).role if entries else None),
        "models": [e.to_dict() for e in entries],
        "comparisons": comparisons(entries),
        "fastest": fastest_holding(entries),
        "plots": [p.name for p in plot_files],
        "extras": plain({k: v for k, v in extras.items() if k not in ("gamma_models",)}, for_json=True),
    }
    paths = {
        "json": atomic_write_text(run_dir / "report.json", json.dumps(report, indent=2) + "\n"),
        "md": atomic_write_text(run_dir / "report.md", markdown(report, entries, plot_files)),
    }
    for p in paths.values():
        p.chmod(0o644)  # atomic writes go through mkstemp (0600); a report is for reading
    paths.update({p.stem: p for p in plot_files})
    if print_summary:
        print_table(entries, console=console)
        for role, flag in no_box_flags(entries):
            (console.print if console is not None else print)(f"WARNING {role}: {flag}")
    return paths


def clear_previous_report(run_dir: str | Path, log=print) -> list[Path]:
    """Delete what an earlier report wrote into `run_dir` (the files its report.json lists: plots, exported
    models, report.json/.md), so a report run into an existing folder leaves nothing stale. Other files stay."""
    run_dir = Path(run_dir)
    try:
        old = load_report(run_dir / "report.json")
    except (OSError, ValueError):
        return []
    names = [*old.get("plots", []), "report.json", "report.md"]
    names += [Path(m["onnx_path"]).name for m in old.get("models", []) if m.get("onnx_path")
              and Path(m["onnx_path"]).resolve().parent == run_dir.resolve()]  # fmt: skip
    gone = [run_dir / n for n in dict.fromkeys(names) if (run_dir / n).is_file()]
    for f in gone:
        f.unlink()
    if gone:
        log(f"{run_dir}: removed the {len(gone)} files of the previous report there")
    return gone


def load_report(path: str | Path) -> dict[str, Any]:
    """Read a report.json, checking the schema name."""
    d = json.loads(Path(path).read_text())
    if not str(d.get("schema", "")).startswith("yolov5-slim.report/"):
        raise ValueError(f"{path}: not a yolov5-slim report (schema {d.get('schema')!r})")
    return d
