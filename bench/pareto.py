"""The speed/accuracy map of every path on a user's data: mAP50 against ONNX Runtime latency on helmets.

Rows (each trained or built on its own and recorded when finished in bench/results/pareto_runs/<row>.json, with its
model beside the record, so the map is built over several sittings of one checkout; models are not committed, so a
new checkout builds a row again; a stopped row resumes: `finetune.py --resume`, the pipeline's stages):
the unpruned yolov5n fine-tuned from yolov5n.pt (the yardstick), the pipeline to 0.7x and 0.5x FLOPs (sparse E/9 +
fine-tune the rest, the helmets recipe) and each of them int8 (reports.int8_select.quantize_best on its ONNX),
v5lite-s and yolov5n-shufflenetv2 from scratch, YOLO-FastestV2 from the authors' ImageNet backbone without and
with `--teacher` (the unpruned yolov5n; recorded as not offered when the trainer refuses that teacher), and
YOLO-FastestV2 pruned (the pipeline on the trained one), four rows run at 256 px as trained (not retrained), and
yolov5n pruned to a 3 ms budget measured on this machine and trained at 256 (`--target-latency 3`, width and
depth moves: the try at 3x the unpruned speed). Every row states its epochs and seed; yolov5 rows at 320 unless
named, YOLO-FastestV2 at its own 352 (in the input convention its checkpoint records: a model trained here from the
backbone is letterboxed RGB, like every model this project trains; the map's input column says which).

The map (after the rows, or alone with --map): every finished row's ONNX timed in one process, one thread,
interleaved; bench/results/pareto.{json,md,png} with speed-ups over the unpruned yolov5n, the Pareto front, the
fastest row within 2 points of its mAP50 and the most accurate at 2x and 3x its speed.

    python bench/pareto.py                           # every row (resuming), then the map
    python bench/pareto.py --rows yolov5n fastestv2  # some rows (and what they build on), then the map
    python bench/pareto.py --map                     # only the map over the finished rows
    python bench/pareto.py --smoke --out DIR         # every row's plumbing on tiny synthetic data, in DIR
"""

from __future__ import annotations

import argparse
from pathlib import Path

from benchlib.pareto_map import build_map
from benchlib.pareto_rows import ROWS, Setup, ensure, row_onnx
from common import REPO, RESULTS, SHARED, runs_dir

from yolo.synthetic import make_synthetic_dataset

QUESTION = "pareto"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", nargs="+", choices=list(ROWS), metavar="ROW",
                    help=f"build only these rows (and the rows they need): {', '.join(ROWS)}")
    ap.add_argument("--map", action="store_true", help="build no row: only the map over the finished ones")
    ap.add_argument("--epochs", type=int, default=90, help="training epochs of every row (default 90)")
    ap.add_argument("--seed", type=int, default=0, help="training seed of every row")
    ap.add_argument("--runs", type=int, default=50, help="timed runs per model in the map (at least 30)")
    ap.add_argument("--data", default=str(SHARED / "datasets" / "helmets" / "helmets.yaml"))
    ap.add_argument("--project", default=None, help="run folders <project>/<row> (default runs/pareto)")
    ap.add_argument("--out", default=None,
                    help="records <out>/pareto_runs/ and the map <out>/pareto.* (default bench/results)")
    ap.add_argument("--smoke", action="store_true",
                    help="every row at a toy size (1 epoch, 64 px, a synthetic dataset): checks the plumbing; "
                         "writes only under --out (default runs/pareto-smoke)")
    args = ap.parse_args(argv)
    if args.smoke and args.out and Path(args.out).resolve() == RESULTS.resolve():
        ap.error("--smoke writes toy figures: give an --out other than bench/results")
    if args.epochs < 1:
        ap.error(f"--epochs {args.epochs}: expected at least 1")
    return args


def setup(args: argparse.Namespace) -> tuple[Setup, Path]:
    """The rows' shared settings and where the map goes; --smoke: tiny data, size and epochs under --out."""
    out = Path(args.out or (REPO / "runs" / "pareto-smoke" if args.smoke else RESULTS))
    project = Path(args.project or (out / "runs" if args.smoke else REPO / "runs" / "pareto"))
    weights = SHARED / "weights"
    for need in (weights / "yolov5n.pt", weights / "shufflenetv2-x0.5-backbone.pth"):
        if not need.is_file():
            raise SystemExit(f"bench/pareto.py needs {need} (the shared weights)")
    s = Setup(data=Path(args.data), weights=weights / "yolov5n.pt", backbone=weights / "shufflenetv2-x0.5-backbone.pth",
              project=project, records=runs_dir(QUESTION, out), epochs=args.epochs, seed=args.seed)
    if args.smoke:
        s.data = make_synthetic_dataset(out / "data", n_train=16, n_val=8, img_size=96)
        s.imgsz = s.fv2_imgsz = 64
        s.epochs, s.batch, s.report_runs, s.smoke = 1, 8, 2, True
    elif not s.data.is_file():
        raise SystemExit(f"--data {s.data}: no such file")
    return s, out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    s, out = setup(args)
    if not args.map:
        for row in args.rows or list(ROWS):
            ensure(s, row)
        print(f"rows built now: {', '.join(s.built) or 'none (all were recorded)'}")
    path = build_map(s.records, out, runs=max(30, args.runs), data="synthetic (smoke)" if args.smoke else s.data.stem,
                     onnx_of=lambda row, figures: row_onnx(s, row, figures))
    if path:
        print((out / "pareto.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
