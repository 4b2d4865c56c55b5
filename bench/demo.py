"""The quick-start demo, timed as a user runs it: does it meet its figures on this machine?

Targets (issue 6): whole run <= 10 min on 2 cores; baseline (the sparse-trained model) mAP50 >= 0.7 on the demo
val split; pruned model <= half the baseline's FLOPs, >= 15% lower median ONNX Runtime latency (interleaved), and
mAP50 within 2 points of the baseline.

    python bench/demo.py [extra demo flags]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, write_result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False,
                                 epilog="every other flag goes to `prune.py demo` (see `python prune.py demo --help`)")
    _, demo_flags = ap.parse_known_args()  # --help here, not a demo run that then finds no report
    work = Path(tempfile.mkdtemp(prefix="yolo-slim-demo-"))
    cmd = [sys.executable, str(REPO / "prune.py"), "demo", "--data-dir", str(work / "data"),
           "--project", str(work / "runs"), "--name", "exp", *demo_flags]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"demo failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    report = json.loads((work / "runs" / "exp" / "report" / "report.json").read_text())
    state = json.loads((work / "runs" / "exp" / "pipeline.json").read_text())["stages"]
    models = {m["role"]: m for m in report["models"]}
    base, fin = models["baseline"], models["finetuned"]
    lat_key = next(iter(base["latency"]))
    figures = {
        "wall_seconds": round(wall, 1),
        "stage_seconds": {k: v["seconds"] for k, v in state.items()},
        "baseline_map50": base["metrics"]["map50"],
        "pruned_no_finetune_map50": models["pruned"]["metrics"]["map50"],
        "finetuned_map50": fin["metrics"]["map50"],
        "baseline_map": base["metrics"]["map"],
        "finetuned_map": fin["metrics"]["map"],
        "gflops": {r: m["gflops"] for r, m in models.items()},
        "params": {r: m["params"] for r, m in models.items()},
        "flops_ratio": fin["gflops"] / base["gflops"],
        "latency_setting": lat_key,
        "latency_median_ms": {r: m["latency"][lat_key]["median_ms"] for r, m in models.items() if m.get("latency")},
        "onnx_mb": {r: m["onnx_mb"] for r, m in models.items()},
    }
    figures["latency_ratio"] = figures["latency_median_ms"]["finetuned"] / figures["latency_median_ms"]["baseline"]
    checks = {
        "wall <= 600 s": wall <= 600,
        "baseline mAP50 >= 0.7": figures["baseline_map50"] >= 0.7,
        "FLOPs <= 0.5x": figures["flops_ratio"] <= 0.5 + 1e-9,
        "latency >= 15% lower": figures["latency_ratio"] <= 0.85,
        "mAP50 within 2 points": figures["finetuned_map50"] >= figures["baseline_map50"] - 0.02,
    }
    figures["checks"] = checks
    rows = "\n".join(
        f"| {r} | {m['params'] / 1e6:.3f} M | {m['gflops']:.3f} | {m['onnx_mb']:.2f} MB | "
        f"{figures['latency_median_ms'].get(r, float('nan')):.2f} ms | {m['metrics']['map50']:.3f} | "
        f"{m['metrics']['map']:.3f} |"
        for r, m in models.items()
    )
    md = (
        f"### Demo (`bash scripts/demo.sh`): synthetic data, yolov5n from scratch at 128 px, 2-core CPU\n\n"
        f"Whole run {wall / 60:.1f} min. ORT latency: {lat_key}, interleaved.\n\n"
        "| model | params | GFLOPs | ONNX | latency (median) | mAP50 | mAP50-95 |\n|---|---|---|---|---|---|---|\n"
        f"{rows}\n\n"
        + "Checks: " + ", ".join(f"{k}: {'yes' if v else '**no**'}" for k, v in checks.items())
    )
    write_result("demo", figures, md)
    print(md)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
