"""How fast pruning is, and which --round-to default pays off in ONNX Runtime latency.

1. speed: dependency graph + plan + compensation/slicing of yolov5s (build_model('yolov5s'), random init) with
   GFLOPs accounted at 640; the requirement is < 5 s on this CPU. BatchNorm gammas are drawn uniform(0, 1) with a
   fixed seed so the plan spreads over the layers as on a trained model (fresh BNs all have gamma 1: a tie).
2. round_to (optional, --round-to-latency): yolov5n (the real weights when ../shared has them) pruned to
   target_flops 0.5 at several round_to values, exported to ONNX and timed interleaved in ONNX Runtime.

Writes bench/results/prune_speed.json (command, machine, figures: speed, round_to_latency).

    python bench/prune_speed.py                       # speed only (a few seconds)
    python bench/prune_speed.py --round-to-latency    # + ONNX Runtime latency per round_to (a few minutes)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import REPO, SHARED, command_line, write_result

from prune import PruneConfig, apply_plan, build_graph, plan_pruning
from yolo.flops import count_gflops
from yolo.model import build_model

LIMIT_S = 5.0


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

    weights = SHARED / "weights" / "yolov5n.pt"
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


def previous_figures(path: Path) -> dict:
    """The figures of an earlier run, so a speed-only run keeps the (slow) round_to part it did not redo."""
    if not path.is_file():
        return {}
    doc = json.loads(path.read_text())
    figures = doc.get("figures", doc)
    return {k: figures[k] for k in ("round_to_latency",) if k in figures}


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
    figures = previous_figures(out)
    figures["speed"] = speed(args.cfg, args.imgsz, args.ratio, args.repeats)
    s = figures["speed"]["timings_s"]
    print(f"{args.cfg}@{args.imgsz}: graph {s['graph_s']['median']:.2f}s + plan {s['plan_ratio_s']['median']:.3f}s "
          f"+ compensate/slice {s['compensate_and_slice_s']['median']:.2f}s = {s['total_s']['median']:.2f}s "
          f"(limit {LIMIT_S}s: {'pass' if figures['speed']['pass'] else 'FAIL'})")  # fmt: skip
    if args.round_to_latency:
        part = round_to_latency(args.round_to, args.imgsz, args.latency_runs, args.threads)
        figures["round_to_latency"] = {"command": command_line(), "date": time.strftime("%Y-%m-%dT%H:%M:%S"), **part}
        for name, v in part["models"].items():
            lat = "  ".join(f"{k}: {x['median_ms']:.1f} ms" for k, x in v.items() if k.startswith("threads"))
            print(f"{name:12s} {v['gflops']:.3f} GFLOPs  {lat}")
    path = write_result(out.stem, figures, markdown(figures), out_dir=out.parent)
    print(f"wrote {path}")
    return 0 if figures["speed"]["pass"] else 1


def markdown(figures: dict) -> str:
    """The README table: seconds per pruning step for yolov5s at 640 (median of the repeats)."""
    sp = figures["speed"]
    t = sp["timings_s"]
    return (
        f"### Pruning cost: {sp['model']}, {sp['imgsz']} px, ratio {sp['ratio']}\n\n"
        "| dependency graph | plan (ratio) | plan (FLOPs target search) | compensate + slice | total | limit |\n"
        "|---|---|---|---|---|---|\n"
        f"| {t['graph_s']['median']:.2f} s | {t['plan_ratio_s']['median']:.3f} s | "
        f"{t['plan_target_flops_s']['median']:.3f} s | {t['compensate_and_slice_s']['median']:.2f} s | "
        f"**{t['total_s']['median']:.2f} s** | {LIMIT_S:.0f} s |"
    )


if __name__ == "__main__":
    sys.exit(main())
