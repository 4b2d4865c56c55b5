"""Question: does ONNX Runtime int8 run 1.5x faster than fp32 here, and if not, where does the time go?

For yolov5n and for yolov5n cut to 0.5x FLOPs (--pruned-weights: a cut fine-tuned on the data; else cut here with
BN-|gamma| importance and a least-squares re-fit, not fine-tuned; its int8 loss is measured against its own
fp32), exports the fp32 ONNX (square --imgsz, 640 by default), builds every int8 variant asked for (QDQ or QOperator,
per-channel or per-tensor weights, reduce_range, the Detect convolutions writing float or int8, signed or unsigned
activations and weights), times them interleaved with fp32 at 1 thread, scores each on the --data val split
(coco128 by default; pycocotools), and profiles fp32 and every variant per operator type with ORT's profiler
(reports.op_profile). Writes bench/results/<--name>.json/.md.

Each model's part is kept in --workdir once done, so a stopped run resumes with the next model. --retime times
and profiles the files of the kept parts again (their mAP stays): the quantising and scoring can run on a busy
machine, the timing then alone on an idle one.

    python bench/int8_profile.py
    python bench/int8_profile.py --models yolov5n --variants u8-percentile-n32 u8-percentile-n32-qop --rounds 40
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from common import REPO, SHARED, markdown_table, need_shared, write_json, write_result

from prune.api import PruneConfig, prune_model
from prune.calib import calib_loader
from reports.export import check_parity, export_onnx
from reports.int8_select import select_int8
from reports.latency import OnnxRunner, benchmark
from reports.op_profile import op_type_profile
from reports.quantize import Int8Config
from yolo.checkpoint import load_model
from yolo.data import load_data_yaml

VARIANTS = [
    "u8-percentile-n32",  # export --int8 times u8, u8-rr and s8 by default
    "u8-percentile-n32-rr",
    "u8-percentile-n32-tensor",
    "u8-percentile-n32-qop",
    "u8-percentile-n32-qhead",
    "u8-percentile-n32-wu8",
    "u8-percentile-n32-wu8-qhead",
    "s8-percentile-n32",
]
MODELS = {"yolov5n": None, "yolov5n-0.5x": 0.5}  # name -> FLOPs kept by the cut (None: as loaded)
RECONSTRUCT = 64  # train images the cut model's convs are re-fit on (prune --reconstruct)
CONV_OPS = {"Conv", "FusedConv", "QLinearConv", "ConvInteger"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", default=str(SHARED / "weights" / "yolov5n.pt"))
    ap.add_argument("--data", default=str(SHARED / "datasets" / "coco128" / "coco128.yaml"))
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    ap.add_argument("--pruned-weights", default=None,
                    help="checkpoint for yolov5n-0.5x (e.g. the cut fine-tuned on the data); default: cut here, "
                         "not fine-tuned")
    ap.add_argument("--variants", nargs="+", default=VARIANTS)
    ap.add_argument("--rounds", type=int, default=30, help="interleaved timing rounds (each runs every model once)")
    ap.add_argument("--profile-runs", type=int, default=10, help="profiled runs per model (after 3 warm-up runs)")
    ap.add_argument("--map-tolerance", type=float, default=0.01)
    ap.add_argument("--workdir", default=str(REPO / "runs" / "bench_int8_profile"))
    ap.add_argument("--out", default=None, help="folder for <name>.json/.md (default bench/results)")
    ap.add_argument("--name", default="int8_profile",
                    help="result name, e.g. int8_profile_vnni for a second kind of CPU beside the first record")
    ap.add_argument("--retime", action="store_true", help="time and profile the kept parts' files again")
    return ap.parse_args(argv)


def model_part(name: str, args: argparse.Namespace, data) -> dict[str, Any]:
    """One model's figures: the selection (latency, mAP of every variant) and the per-op profiles."""
    work = Path(args.workdir) / name
    done = work / "part.json"
    if done.is_file():
        print(f"{name}: done in an earlier run ({done})" + ("; timing it again" if args.retime else ""))
        part = json.loads(done.read_text())
        if args.retime:
            retime(part, args)
            write_json(done, part)
        return part
    t0 = time.time()
    model, meta = load_model(args.pruned_weights if MODELS[name] is not None and args.pruned_weights else args.weights)
    if MODELS[name] is not None and not args.pruned_weights:
        cfg = PruneConfig(target_flops=MODELS[name], imgsz=args.imgsz, reconstruct=RECONSTRUCT)
        model, _ = prune_model(model, cfg, calib_loader=calib_loader(data, args.imgsz, RECONSTRUCT, batch_size=8))
    fp32 = export_onnx(model, work / f"{name}.onnx", args.imgsz, metadata=meta)
    parity = check_parity(model, fp32, list(data.val)[:2])
    print(f"{name}: {parity.summary()}")
    configs = [Int8Config.from_tag(v) for v in args.variants]
    calib = list(data.train)[: max(c.images for c in configs)]
    sel = select_int8(fp32, work, calib, configs, data_cfg=data, map_tolerance=args.map_tolerance, threads=1,
                      rounds=args.rounds, eval_kwargs={"batch_size": 8, "imgsz": args.imgsz})
    print(f"{name}: {sel.reason}")
    paths = {"fp32": str(fp32), **{Int8Config(**v.config).tag: v.path for v in sel.variants if v.error is None}}
    profiles = {k: op_type_profile(p, threads=1, runs=args.profile_runs, imgsz=args.imgsz) for k, p in paths.items()}
    part = {"parity_fp32": parity.to_dict(), "selection": sel.to_dict(), "profiles": profiles,
            "seconds": round(time.time() - t0, 1)}
    write_json(done, part)
    return part


def retime(part: dict[str, Any], args: argparse.Namespace) -> None:
    """Time fp32 and every built variant again, interleaved, and profile them again; mAP and files as they were."""
    sel = part["selection"]
    ok = [v for v in sel["variants"] if not v.get("error")]
    runners = {"fp32": OnnxRunner(sel["fp32"]["path"], 1), **{v["path"]: OnnxRunner(v["path"], 1) for v in ok}}
    lat = benchmark(runners, runs=args.rounds, warmup=3)
    sel["fp32"]["latency_ms"] = base = lat["fp32"]["median_ms"]
    for v in ok:
        v["latency_ms"] = lat[v["path"]]["median_ms"]
        v["ratio_to_fp32"] = v["latency_ms"] / base
    paths = {"fp32": sel["fp32"]["path"], **{Int8Config(**v["config"]).tag: v["path"] for v in ok}}
    part["profiles"] = {k: op_type_profile(p, threads=1, runs=args.profile_runs, imgsz=args.imgsz)
                        for k, p in paths.items()}
    sel["chosen"], sel["reason"] = verdict(ok, args.rounds)


def verdict(ok: list[dict], rounds: int) -> tuple[str | None, str]:
    """The selection rule of reports.int8_select on re-timed figures: (chosen path or None, why)."""
    faster = [v for v in ok if v["ratio_to_fp32"] < 1.0]
    chosen = [v for v in faster if v.get("holds_accuracy") is not False]
    if chosen:
        best = min(chosen, key=lambda v: v["latency_ms"])
        return best["path"], (f"fastest variant within tolerance: {best['ratio_to_fp32']:.2f}x the fp32 time, "
                              f"mAP50-95 {best['map']:.4f} (re-timed, {rounds} rounds)")
    why = "no faster int8 variant keeps mAP50-95 within tolerance" if faster else \
        "no int8 variant is faster than fp32 on this CPU"
    return None, f"{why}; fp32 stays the deliverable (re-timed, {rounds} rounds)"


def markdown(figures: dict[str, Any]) -> str:
    st = figures["settings"]
    parts = ["### ONNX Runtime int8 vs fp32, 1 thread: variants and where the time goes "
             f"({Path(st['data']).stem} val, square {st['imgsz']})", ""]
    for name, part in figures["models"].items():
        what = f" ({st['pruned']})" if MODELS.get(name) is not None else ""
        parts += [f"**{name}**{what}", "", variant_table(part), "", profile_table(part), "",
                  f"{name}: {part['selection']['reason']}", ""]
    return "\n".join(parts)


def variant_table(part: dict[str, Any]) -> str:
    sel = part["selection"]
    fp = sel["fp32"]
    rows = [["fp32", f"{fp['size_mb']:.1f}", f"{fp['latency_ms']:.1f}", "1.00x", f"{fp['map']:.4f}", "", ""]]
    for v in sel["variants"]:
        if v.get("error"):
            rows.append([Int8Config(**v["config"]).tag, "-", "-", "-", "-", "-", v["error"]])
            continue
        kept = "**chosen**" if v["path"] == sel.get("chosen") else ""
        rows.append([Int8Config(**v["config"]).tag, f"{v['size_mb']:.1f}", f"{v['latency_ms']:.1f}",
                     f"{1 / v['ratio_to_fp32']:.2f}x", f"{v['map']:.4f}", f"{fp['map'] - v['map']:+.4f}", kept])
    return markdown_table(["model", "MB", "median ms", "speed-up", "mAP50-95", "loss", ""], rows)


def profile_table(part: dict[str, Any]) -> str:
    """Per op type, ms per run in each profiled model; then the convolutions' and the rest's totals."""
    prof = part["profiles"]
    names = list(prof)
    ops = sorted({op for p in prof.values() for op in p}, key=lambda op: -max(p.get(op, 0) for p in prof.values()))
    rows = [[op, *(f"{prof[n].get(op, 0):.1f}" if prof[n].get(op) else "" for n in names)]
            for op in ops if max(p.get(op, 0) for p in prof.values()) >= 0.2]
    conv = {n: sum(v for op, v in prof[n].items() if op in CONV_OPS) for n in names}
    rest = {n: sum(prof[n].values()) - conv[n] for n in names}
    rows.append(["**convolutions**", *(f"**{conv[n]:.1f}**" for n in names)])
    rows.append(["**everything else**", *(f"**{rest[n]:.1f}**" for n in names)])
    rows.append(["**convolutions: speed-up vs fp32**", *(f"{conv['fp32'] / conv[n]:.2f}x" for n in names)])
    return markdown_table(["op type (ms per run, ORT profiler)", *names], rows)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    need_shared()
    t0 = time.time()
    data = load_data_yaml(args.data)
    models = {name: model_part(name, args, data) for name in args.models}
    figures = {
        "question": "ONNX Runtime int8 >= 1.5x fp32 at <= 0.01 mAP50-95 loss? If not, the per-op profile that says why",
        "settings": {"weights": args.weights, "data": args.data, "imgsz": args.imgsz, "threads": 1,
                     "rounds": args.rounds, "profile_runs": args.profile_runs, "variants": args.variants,
                     "map_tolerance": args.map_tolerance,
                     "pruned": args.pruned_weights or f"prune_model(target_flops=0.5, reconstruct={RECONSTRUCT}), "
                                                      "BN-|gamma| importance, not fine-tuned"},
        "models": models,
        "seconds": round(time.time() - t0, 1),
    }
    out = write_result(args.name, figures, markdown(figures), out_dir=Path(args.out) if args.out else None)
    print(markdown(figures))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
