"""Question: what do whole detection scales and whole residual blocks cost and save on yolov5n?

yolov5n.pt with P5 dropped, with P3 dropped (prune.drop_scale: the level and the neck that only fed it), and
with the N least important residual blocks removed (prune.depth_prune, importance measured on coco128 train
images), none fine-tuned: parameters, GFLOPs, anchors, ONNX parity against PyTorch on coco128 val images, ONNX
Runtime latency at 1 thread (all models interleaved in one process), and mAP on coco128 val as cut. Writes
bench/results/structure.json and .md. The CI tests (tests/test_prune_structure.py) show that such models
fine-tune and learn; this is the size and speed side.

    python bench/structure.py
    python bench/structure.py --depth 2 4 --rounds 50
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from common import REPO, SHARED, markdown_table, need_shared, write_result

from prune.calib import calib_loader
from prune.depth import depth_prune
from prune.scales import drop_scale
from reports.export import check_parity, export_onnx
from reports.latency import OnnxRunner, benchmark
from reports.onnx_backend import OnnxDetector
from yolo.checkpoint import load_model
from yolo.data import load_data_yaml
from yolo.flops import count_gflops, count_params
from yolo.val import evaluate


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", default=str(SHARED / "weights" / "yolov5n.pt"))
    ap.add_argument("--data", default=str(SHARED / "datasets" / "coco128" / "coco128.yaml"))
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--depth", type=int, nargs="*", default=[2], help="residual blocks removed, one model each")
    ap.add_argument("--rounds", type=int, default=40, help="interleaved timing rounds")
    ap.add_argument("--workdir", default=str(REPO / "runs" / "bench_structure"))
    ap.add_argument("--out", default=None, help="folder for structure.json/.md (default bench/results)")
    return ap.parse_args(argv)


def build_models(args: argparse.Namespace, data) -> dict[str, Any]:
    """name -> (module, what was removed)."""
    base, _ = load_model(args.weights)
    models: dict[str, Any] = {"yolov5n": (base, "-")}
    for level in ("P5", "P3"):
        m, table = drop_scale(base, level, imgsz=args.imgsz)
        removed = [r["layer"] for r in table.rows if r["removed"]]
        what = f"layers {', '.join(map(str, removed))} and " if removed else ""
        models[f"{level} dropped"] = (m, f"{what}Detect's {level} output conv")
    for n in args.depth:
        images = calib_loader(data, args.imgsz, 32, batch_size=8)
        m, table = depth_prune(base, n, images, imgsz=args.imgsz, n_images=32)
        gone = [r.name for r in table.removed]
        models[f"{n} blocks removed"] = (m, ", ".join(gone))
    return models


def measure(models: dict[str, Any], args: argparse.Namespace, data, work: Path) -> dict[str, dict]:
    rows: dict[str, dict] = {}
    parity_images = list(data.val)[:4]
    for name, (m, removed) in models.items():
        path = export_onnx(m.eval(), work / f"{name.replace(' ', '_')}.onnx", args.imgsz)
        parity = check_parity(m, path, parity_images, raise_on_fail=False)
        det = OnnxDetector(path)
        anchors = int(det.session.get_outputs()[0].shape[1])
        res = evaluate(det, data, imgsz=args.imgsz, batch_size=8, progress=False)
        rows[name] = {"removed": removed, "params": count_params(m), "gflops": count_gflops(m, args.imgsz),
                      "anchors": anchors, "parity": parity.passed, "parity_summary": parity.summary(),
                      "map50": res["map50"], "map": res["map"], "onnx": str(path)}
        print(f"{name}: {rows[name]['params'] / 1e6:.3f} M, {rows[name]['gflops']:.3f} GFLOPs, {anchors} anchors, "
              f"parity {'OK' if parity.passed else 'FAILED'}, mAP50 {res['map50']:.3f}")
    lat = benchmark({n: OnnxRunner(r["onnx"], 1) for n, r in rows.items()}, runs=args.rounds, warmup=5)
    base = lat["yolov5n"]["median_ms"]
    for n, r in rows.items():
        r["latency_ms"] = lat[n]["median_ms"]
        r["p90_ms"] = lat[n].get("p90_ms")
        r["speedup"] = base / lat[n]["median_ms"]
    return rows


def table(rows: dict[str, dict], imgsz: int) -> str:
    base = rows["yolov5n"]
    body = [[n, r["removed"], f"{r['params'] / 1e6:.3f} ({r['params'] / base['params']:.2f}x)",
             f"{r['gflops']:.3f} ({r['gflops'] / base['gflops']:.2f}x)", r["anchors"],
             "OK" if r["parity"] else "**FAILED**", f"{r['latency_ms']:.1f}", f"{r['speedup']:.2f}x",
             f"{r['map50']:.3f}", f"{r['map']:.3f}"] for n, r in rows.items()]
    head = (f"### Whole scales and blocks removed from yolov5n, not fine-tuned (square {imgsz}, ONNX Runtime "
            "1 thread)\n\n")
    return head + markdown_table(["model", "removed", "params M", f"GFLOPs@{imgsz}", "anchors", "parity",
                                  "median ms", "speed-up", "mAP50", "mAP50-95"], body)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    need_shared()
    t0 = time.time()
    data = load_data_yaml(args.data)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    rows = measure(build_models(args, data), args, data, work)
    figures = {"question": "size, speed and as-cut mAP of yolov5n without a detection scale or residual blocks",
               "settings": {"weights": args.weights, "data": args.data, "imgsz": args.imgsz, "threads": 1,
                            "rounds": args.rounds, "depth": args.depth},
               "models": {n: {k: v for k, v in r.items() if k != "onnx"} for n, r in rows.items()},
               "seconds": round(time.time() - t0, 1)}
    out = write_result("structure", figures, table(rows, args.imgsz), out_dir=Path(args.out) if args.out else None)
    print(table(rows, args.imgsz))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
