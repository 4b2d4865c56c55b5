"""bench/pareto.py's map: every finished row's ONNX timed in one process (ONNX Runtime, one thread, interleaved),
the Pareto front of mAP50 against latency, the table with its verdicts, and the picture."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

from common import REPO, markdown_table, read_records, write_attachment, write_result

from benchlib.pareto_rows import ARCH_SUFFIX, ROWS, YARDSTICK
from reports.latency import OnnxRunner, benchmark
from reports.plots import pareto_map

OnnxOf = Callable[[str, dict], "Path | None"]  # (row, recorded figures) -> the ONNX file to time
WITHIN = 0.02  # "within 2 points of mAP50 of the unpruned yolov5n"
SPEEDUPS = (2.0, 3.0)


def finished_rows(records: Path, onnx_of: OnnxOf | None = None) -> tuple[dict[str, dict], dict[str, dict]]:
    """(rows with an ONNX file to time, rows recorded as not offered), in the map's row order. `onnx_of` finds or
    makes a row's ONNX (pareto_rows.row_onnx: exported again from the weights kept beside the record, else its
    recorded architecture rebuilt untrained: "timed" says which); without it only an ONNX named by the record
    (beside it, or an absolute path) counts."""
    order = list(ROWS)
    figs = {doc["figures"]["row"]: doc["figures"] for _, doc in read_records(records) if "figures" in doc}
    figs = dict(sorted(figs.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)))
    offered = {r: f for r, f in figs.items() if f.get("status") == "not offered"}
    timed = {}
    for r, f in figs.items():
        if r in offered:
            continue
        onnx = onnx_of(r, f) if onnx_of else (f.get("onnx") and records / f["onnx"])  # an absolute path stays one
        if onnx and Path(onnx).is_file():
            how = "architecture" if Path(onnx).stem.endswith(ARCH_SUFFIX) else "trained model"
            timed[r] = {**f, "onnx": str(onnx), "timed": how}
        else:
            print(f"row {r}: recorded, but neither its model nor its architecture is in this checkout: left out of "
                  "the map (build it again)")
    return timed, offered


def time_rows(rows: dict[str, dict], runs: int) -> dict[str, dict]:
    """Each row's ONNX at its own fixed input size, all in this process, interleaved, one thread."""
    runners = {r: OnnxRunner(f["onnx"], threads=1) for r, f in rows.items()}
    return benchmark(runners, runs=runs, warmup=5)


def front(rows: dict[str, dict]) -> set[str]:
    """The rows no other row beats on both latency and mAP50 (ties in latency: the more accurate)."""
    best, keep = -1.0, set()
    for r in sorted(rows, key=lambda r: (rows[r]["latency_ms"], -rows[r]["map50"])):
        if rows[r]["map50"] > best:
            best = rows[r]["map50"]
            keep.add(r)
    return keep


def verdicts(rows: dict[str, dict]) -> dict:
    """The fastest row within 2 points of the unpruned yolov5n's mAP50, and the most accurate at >= 2x / 3x its
    speed (None when no row qualifies, or no yardstick)."""
    base = rows.get(YARDSTICK)
    if base is None:
        return {"note": f"no {YARDSTICK} row yet: no speed-ups or verdicts"}
    close = [r for r in rows if rows[r]["map50"] >= base["map50"] - WITHIN - 1e-12]
    fastest = min(close, key=lambda r: rows[r]["latency_ms"])
    out = {"fastest_within_2_points": {"row": fastest, "speedup": rows[fastest]["speedup"],
                                       "map50_vs_yardstick": rows[fastest]["map50"] - base["map50"]}}
    for x in SPEEDUPS:
        fast = [r for r in rows if rows[r]["speedup"] >= x]
        best = max(fast, key=lambda r: rows[r]["map50"]) if fast else None
        out[f"most_accurate_at_{x:g}x"] = best and {"row": best, "speedup": rows[best]["speedup"],
                                                     "map50": rows[best]["map50"]}
    return out


def build_map(
    records: Path, out: Path, runs: int = 30, data: str = "helmets", onnx_of: OnnxOf | None = None
) -> Path | None:
    """pareto.json / .md / .png in `out` from the finished rows in `records`; None when no row is finished."""
    rows, offered = finished_rows(records, onnx_of)
    if not rows:
        print(f"no finished row in {records}: nothing to map")
        return None
    lat = time_rows(rows, max(30, runs))
    base = lat.get(YARDSTICK, {}).get("median_ms")
    for r, f in rows.items():
        f["latency_ms"], f["p90_ms"] = lat[r]["median_ms"], lat[r]["p90_ms"]
        f["speedup"] = base / f["latency_ms"] if base else None
    on_front = front(rows)
    for r, f in rows.items():
        f["front"] = r in on_front
    figures = {"rows": rows, "not_offered": {r: repo_relative(f["message"]) for r, f in offered.items()},
               "verdicts": verdicts(rows), "latency_runs": max(30, runs),
               "timing": "ONNX Runtime, 1 thread, all rows interleaved in one process, each at its own input size"}
    figures["data"] = data
    path = write_result("pareto", figures, markdown(figures), out_dir=out)
    with tempfile.TemporaryDirectory() as tmp:
        points = [{"name": r, **f} for r, f in rows.items()]
        png = pareto_map(points, Path(tmp) / "pareto.png", f"{data}: mAP50 against latency (ORT, 1 thread)",
                         yardstick=YARDSTICK)
        if png:
            write_attachment(png, "pareto.png", out)
    return path


def _x(v: float | None) -> str:
    return f"{v:.2f}x" if v else "-"


def verdict_lines(v: dict) -> list[str]:
    if "note" in v:
        return [v["note"]]
    f = v["fastest_within_2_points"]
    lines = [f"- Fastest within 2 points of mAP50 of the unpruned yolov5n: **{f['row']}**, {_x(f['speedup'])} its "
             f"speed ({100 * f['map50_vs_yardstick']:+.1f} points)."]
    for x in SPEEDUPS:
        b = v[f"most_accurate_at_{x:g}x"]
        lines.append(f"- Most accurate at >= {x:g}x the unpruned speed: " + (
            f"**{b['row']}** (mAP50 {b['map50']:.3f}, {_x(b['speedup'])})" if b else "none of the rows"))
    return lines


def arch_check_text(rows: dict[str, dict]) -> str:
    """What the rows' own checks say of timing an architecture instead of the trained file."""
    ratios = sorted(f["arch_check"]["arch_over_trained"] for f in rows.values() if f.get("arch_check"))
    if not ratios:
        return ""
    span = f"{ratios[0]:.3f}" if ratios[0] == ratios[-1] else f"{ratios[0]:.3f}-{ratios[-1]:.3f}"
    return (f" In the {len(ratios)} rows' checks the untrained architecture took {span}x the trained model's time: "
            "a row timed so reads that much faster than it is.")


def markdown(figures: dict) -> str:
    header = ["row", "model", "epochs", "seed", "input", "params", "MB", "GFLOPs", "mAP50", "mAP50-95",
              "latency ms", "speed-up", "front"]
    body = [[r, f["label"], f["epochs_text"], f["seed"], f"{f['imgsz']} {f['input']}", f"{f['params'] / 1e6:.3f} M",
             f"{f['onnx_mb']:.2f}", f"{f['gflops']:.3f}", f"{f['map50']:.3f}", f"{f['map']:.3f}",
             f"{f['latency_ms']:.2f}", _x(f["speedup"]), "yes" if f["front"] else ""]
            for r, f in figures["rows"].items()]
    failed = [r for r, f in figures["rows"].items() if f.get("parity_passed") is False]
    arch = [r for r, f in figures["rows"].items() if f.get("timed") == "architecture"]
    missing = [r for r in ROWS if r not in figures["rows"] and r not in figures["not_offered"]]
    data = figures.get("data", "helmets")
    parts = [f"### Pareto map on {data}: every path side by side (mAP50 against ONNX Runtime latency, 1 thread)",
             "Each row is trained and recorded on its own (`bench/results/pareto_runs/<row>.json`); the map times "
             f"every finished row's ONNX in one process, interleaved, {figures['latency_runs']} runs each, at its own "
             f"input size and convention (the input column). mAP on the {data} val split as ONNX Runtime runs each "
             "file; MB is the ONNX file; speed-up over the unpruned yolov5n.",
             markdown_table(header, body), "\n".join(verdict_lines(figures["verdicts"])),
             "![mAP50 against latency](bench/results/pareto.png)"]
    if arch:
        parts.append("Timed from the recorded architecture with untrained weights (this checkout does not hold the "
                     "trained file; models are not committed; latency depends on the architecture, not on the weights' "
                     "values: each row's `arch_check` times both when it is built): " + ", ".join(arch) + "."
                     + arch_check_text(figures["rows"]))
    if figures["not_offered"]:
        parts.append("Not offered:\n\n" + "\n".join(f"- {r}: {m}" for r, m in figures["not_offered"].items()))
    if failed:
        parts.append("**ONNX parity with PyTorch failed** (see each row's record): " + ", ".join(failed) + ".")
    if missing:
        parts.append("Not built yet: " + ", ".join(missing) + ".")
    return "\n\n".join(parts)


def repo_relative(text: str) -> str:
    """Paths under the checkout written relative to it: the map's pages are read on other machines."""
    return text.replace(f"{REPO}/", "")
