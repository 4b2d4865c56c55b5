"""How fast pruning is, and which --round-to default pays off in ONNX Runtime latency.

1. speed: dependency graph + plan + compensation/slicing of yolov5s (build_model('yolov5s'), random init) with
   GFLOPs accounted at 640; the requirement is < 5 s on this CPU. BatchNorm gammas are drawn uniform(0, 1) with a
   fixed seed so the plan spreads over the layers as on a trained model (fresh BNs all have gamma 1: a tie).
2. round_to (optional, --round-to-latency): yolov5n (the real weights when ../shared has them) pruned to
   target_flops 0.5 at several round_to values, exported to ONNX and timed interleaved in ONNX Runtime.

Writes bench/results/prune_speed.json (command, machine, versions, timings).

    python bench/prune_speed.py                       # speed only (a few seconds)
    python bench/prune_speed.py --round-to-latency    # + ONNX Runtime latency per round_to (a few minutes)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch_pruning as tp  # noqa: E402

from prune import PruneConfig, apply_plan, build_graph, plan_pruning  # noqa: E402
from yolo.fileio import atomic_write_text  # noqa: E402
from yolo.flops import count_gflops  # noqa: E402
from yolo.model import build_model  # noqa: E402

LIMIT_S = 5.0


def machine() -> dict:
    cpu = "?"
    try:
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        cpu = platform.processor() or platform.machine()
    return {
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torch_pruning": tp.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
    }


def speed(cfg: str, imgsz: int, ratio: float, repeats: int, seed: int = 0) -> dict:
    model = build_model(cfg).eval()
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data = torch.rand(m.num_features, generator=g)
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        graph = build_graph(model, imgsz)
        t1 = time.perf_counter()
        plan = plan_pruning(graph, PruneConfig(ratio=ratio, imgsz=imgsz))
        t2 = time.perf_counter()
        pruned = apply_plan(model, plan)
        t3 = time.perf_counter()
        target = plan_pruning(graph, PruneConfig(target_flops=0.5, imgsz=imgsz))
        t4 = time.perf_counter()
        runs.append({"graph_s": t1 - t0, "plan_ratio_s": t2 - t1, "compensate_and_slice_s": t3 - t2,
                     "total_s": t3 - t0, "plan_target_flops_s": t4 - t3})  # fmt: skip
    with torch.no_grad():
        pruned(torch.zeros(1, 3, 320, 320))  # the pruned model runs
    summary = {k: {"median": statistics.median(r[k] for r in runs), "min": min(r[k] for r in runs)} for k in runs[0]}
    t = plan.table
    return {
        "model": f"build_model({cfg!r}), random init, BN gammas ~ U(0,1) seed {seed}",
        "imgsz": imgsz, "ratio": ratio, "repeats": repeats, "groups": len(graph.groups),
        "timings_s": summary, "runs": runs, "limit_s": LIMIT_S,
        "pass": summary["total_s"]["median"] < LIMIT_S,
        "gflops_before": round(t.gflops_before, 4), "gflops_after": round(t.gflops_after, 4),
        "gflops_after_measured": round(count_gflops(pruned, imgsz), 4),
        "target_flops_0.5_kept": round(target.table.flops_kept, 4),
    }  # fmt: skip


def round_to_latency(values: list[int], imgsz: int, runs: int, threads: list[int]) -> dict:
    from reports.export import export_onnx
    from reports.latency import benchmark_files
    from yolo.checkpoint import load_model

    weights = REPO.parent / "shared" / "weights" / "yolov5n.pt"
    model = load_model(weights)[0] if weights.is_file() else build_model("yolov5n")
    source = str(weights) if weights.is_file() else "build_model('yolov5n') random init"
    graph = build_graph(model, imgsz)
    info, paths = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        paths["unpruned"] = export_onnx(model, Path(tmp) / "unpruned.onnx", imgsz=imgsz)
        info["unpruned"] = {"gflops": round(graph.flops / 1e9, 4)}
        for r in values:
            plan = plan_pruning(graph, PruneConfig(target_flops=0.5, round_to=r, imgsz=imgsz))
            pruned = apply_plan(model, plan)
            paths[f"round_to={r}"] = export_onnx(pruned, Path(tmp) / f"r{r}.onnx", imgsz=imgsz)
            info[f"round_to={r}"] = {"gflops": round(plan.table.gflops_after, 4),
                                     "params": plan.table.params_after}  # fmt: skip
        res = benchmark_files(paths, threads=threads, runs=runs, warmup=5, imgsz=imgsz)
    for key, table in res["results"].items():
        for name, stats in table.items():
            info[name][f"threads_{key}"] = {k: round(stats[k], 3) for k in ("median_ms", "min_ms", "p90_ms")}
    return {"weights": source, "target_flops": 0.5, "imgsz": imgsz, "runs": runs, "models": info,
            "note": "ONNX Runtime CPU, models timed interleaved (reports.latency.benchmark_files)"}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cfg", default="yolov5s")
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--ratio", type=float, default=0.3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--round-to-latency", action="store_true", help="also time ONNX Runtime per round_to")
    p.add_argument("--round-to", type=int, nargs="+", default=[1, 4, 8, 16])
    p.add_argument("--latency-runs", type=int, default=30)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "prune_speed.json"))
    args = p.parse_args(argv)
    out = Path(args.out)
    result = json.loads(out.read_text()) if out.is_file() else {}
    result.update({"command": " ".join(["python", "bench/prune_speed.py", *map(shlex.quote, argv or sys.argv[1:])]),
                   "date": time.strftime("%Y-%m-%dT%H:%M:%S"), "machine": machine()})  # fmt: skip
    result["speed"] = speed(args.cfg, args.imgsz, args.ratio, args.repeats)
    s = result["speed"]["timings_s"]
    print(f"{args.cfg}@{args.imgsz}: graph {s['graph_s']['median']:.2f}s + plan {s['plan_ratio_s']['median']:.3f}s "
          f"+ compensate/slice {s['compensate_and_slice_s']['median']:.2f}s = {s['total_s']['median']:.2f}s "
          f"(limit {LIMIT_S}s: {'pass' if result['speed']['pass'] else 'FAIL'})")  # fmt: skip
    if args.round_to_latency:
        result["round_to_latency"] = round_to_latency(args.round_to, args.imgsz, args.latency_runs, args.threads)
        for name, v in result["round_to_latency"]["models"].items():
            lat = "  ".join(f"{k}: {x['median_ms']:.1f} ms" for k, x in v.items() if k.startswith("threads"))
            print(f"{name:12s} {v['gflops']:.3f} GFLOPs  {lat}")
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    atomic_write_text(out.with_suffix(".md"), markdown(result))
    print(f"wrote {out}")
    return 0 if result["speed"]["pass"] else 1


def markdown(result: dict) -> str:
    """The README table: seconds per pruning step for yolov5s at 640 (median of the repeats)."""
    sp = result["speed"]
    t = sp["timings_s"]
    return (
        f"### Pruning cost: {sp['model']}, {sp['imgsz']} px, ratio {sp['ratio']}\n\n"
        "| dependency graph | plan (ratio) | plan (FLOPs target search) | compensate + slice | total | limit |\n"
        "|---|---|---|---|---|---|\n"
        f"| {t['graph_s']['median']:.2f} s | {t['plan_ratio_s']['median']:.3f} s | "
        f"{t['plan_target_flops_s']['median']:.3f} s | {t['compensate_and_slice_s']['median']:.2f} s | "
        f"**{t['total_s']['median']:.2f} s** | {LIMIT_S:.0f} s |\n\n`{result['command']}`\n"
    )


if __name__ == "__main__":
    sys.exit(main())
