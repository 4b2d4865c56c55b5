"""bench/pareto.py's rows: how each path of the map is trained (or built from another row), exported and scored.

A row is a part built on its own, in its own run folder (<project>/<row>), and recorded when finished as
<records>/<row>.json with the model a later sitting needs beside it: <row>.pt, the row's stripped fp16 weights, from
which its ONNX is exported again (exactly: those are the weights it was exported and scored from), or for an int8
row <row>.onnx itself; the record names them relative to itself. The record also holds the row's architecture (the
model yaml and every layer's channel counts, and for an int8 row the quantisation it was built with).

Model files are not committed (.gitignore), so a new checkout holds the records and not the models. Latency is a
property of the architecture, not of the weights' values, so the map times a row whose trained file is missing from
its architecture rebuilt with untrained weights (`arch_onnx`; the map's table says which rows were timed so, and each
row's record holds the check that both time alike: `arch_check`). Its accuracy stays the one measured on the trained
model when the row was built. Only a row another row builds on (the int8 rows on their fp32 row, the pruned
FastestV2 on the trained one, the distilled FastestV2 on its yolov5n teacher) needs its trained model: when the
checkout does not hold it, that row is trained again first (`trained_row`). Training
runs as the usual commands in a child process, so a stopped row resumes where it stopped: `finetune.py --resume`
on the run's last.pt, `prune.py pipeline` by its own pipeline.json stage bookkeeping.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import yaml
from common import REPO, write_attachment, write_result

from benchlib.helmets_run import epoch_seconds
from finetune.checkpoints import finished_run
from finetune.distill import TeacherError, check_compatible
from finetune.runs import read_results
from reports.export import check_parity, export_onnx
from reports.int8_select import quantize_best
from reports.latency import OnnxRunner, benchmark
from reports.onnx_backend import OnnxDetector
from reports.quantize import Int8Config, quantize_int8
from yolo.checkpoint import load_model, strip_checkpoint
from yolo.convention import DEFAULT as DEFAULT_CONVENTION
from yolo.convention import InputConvention, from_meta
from yolo.data import load_data_yaml
from yolo.fileio import plain
from yolo.flops import model_info
from yolo.model import DetectionModel, build_model, module_shapes
from yolo.val import evaluate

YARDSTICK = "yolov5n"
ARCH_SUFFIX = "-arch"  # <row>-arch.onnx: the architecture rebuilt untrained, timed when the model is missing


@dataclass
class Setup:
    """What every row shares: data, starting files, sizes, epochs, seed and where runs and records go."""

    data: Path
    weights: Path  # yolov5n.pt
    backbone: Path  # the authors' ImageNet ShuffleNetV2 x0.5
    project: Path  # run folders: <project>/<row>
    records: Path  # finished rows: <records>/<row>.json
    imgsz: int = 320
    fv2_imgsz: int = 352  # YOLO-FastestV2's own size (stretched, BGR)
    epochs: int = 90
    seed: int = 0
    batch: int = 16
    report_runs: int = 10  # the pipeline's own report stage (the map times everything again)
    smoke: bool = False  # toy data at 64 px: a latency budget in ms becomes a small speed-up
    quiet: bool = True
    built: list[str] = field(default_factory=list)  # rows built in this run, in order (rebuilt parents too)

    def split(self) -> tuple[int, int]:
        """The pipeline's sparse + fine-tune epochs for a budget of `epochs` (the helmets recipe's 10 + 80 of 90)."""
        sparse = max(1, round(self.epochs / 9))
        return sparse, max(1, self.epochs - sparse)


@dataclass(frozen=True)
class Row:
    name: str
    label: str
    build: Callable[[Setup, str], dict]
    needs: tuple[str, ...] = ()


# ------------------------------------------------------------------------------------------------ commands


def run_command(cmd: list[str], row: str) -> None:
    """A training command in a child process; a failure stops the bench in one line (re-running resumes)."""
    print(f"[{row}] {shlex.join(cmd)}", flush=True)
    code = subprocess.run(cmd, cwd=REPO).returncode
    if code:
        sys.exit(f"row {row}: `{shlex.join(cmd[1:3])} ...` exited with {code}; run the same bench command again "
                 "to resume it")


def train(s: Setup, row: str, start: list[str], imgsz: int) -> dict:
    """finetune.py into <project>/<row>, resumed from its last.pt when a run was stopped; skipped when finished."""
    run = s.project / row
    last = run / "weights" / "last.pt"
    cmd = [sys.executable, str(REPO / "finetune.py"), *start, "--data", str(s.data), "--imgsz", str(imgsz),
           "--epochs", str(s.epochs), "--batch-size", str(s.batch), "--nbs", str(s.batch), "--seed", str(s.seed),
           "--project", str(s.project), "--name", row, "--exist-ok", *(["--quiet"] if s.quiet else [])]
    if last.is_file() and finished_run(last) is None:
        check_same_run(run, s.epochs, s.seed, row)
        run_command([sys.executable, str(REPO / "finetune.py"), "--resume", str(last)], row)
    elif not last.is_file():
        run_command(cmd, row)
    done = finished_run(last)
    if done is None:
        sys.exit(f"row {row}: {last} is not a finished run")
    seconds = sum(float(r.get("time", 0.0) or 0.0) for r in read_results(run / "results.csv"))
    return {"weights": str(done.best or done.last), "command": shlex.join(cmd[1:]), "train_seconds": round(seconds, 1),
            "epochs": s.epochs}


def check_same_run(run: Path, epochs: int, seed: int, row: str) -> None:
    """A stopped run is resumed only when it is the run asked for (same epochs and seed)."""
    args = run / "args.yaml"
    if not args.is_file():
        return
    had = yaml.safe_load(args.read_text()) or {}
    if (had.get("epochs"), had.get("seed")) != (epochs, seed):
        sys.exit(f"row {row}: {run} holds a stopped run of {had.get('epochs')} epochs, seed {had.get('seed')}; this "
                 f"bench asks {epochs}, seed {seed} (remove that folder or give another --project)")


def pipeline(s: Setup, row: str, weights: str, imgsz: int, amount: list[str], goal: str) -> dict:
    """`prune.py pipeline` (the helmets recipe: targeted sparse stage, cut with re-fit, fine-tune) to `amount` (its
    flags, e.g. --target-flops 0.7) in <project>/<row>; re-running the same command skips finished stages and resumes
    a stopped one. `goal` says the amount in words for the row's recipe."""
    sparse, finetune = s.split()
    cmd = [sys.executable, str(REPO / "prune.py"), "pipeline", "--weights", weights, "--data", str(s.data),
           "--imgsz", str(imgsz), "--batch-size", str(s.batch), "--nbs", str(s.batch),
           "--sparse-epochs", str(sparse), "--finetune-epochs", str(finetune), *amount,
           "--reconstruct", "128", "--seed", str(s.seed), "--latency-runs", str(s.report_runs), "--threads", "1",
           "--project", str(s.project), "--name", row, *(["--quiet"] if s.quiet else [])]
    run_command(cmd, row)
    run = s.project / row
    summary = json.loads((run / "summary.json").read_text())
    stages = json.loads((run / "pipeline.json").read_text())["stages"]
    seconds = sum(epoch_seconds(stages[k]) for k in ("sparse", "finetune") if k in stages)
    return {"weights": summary["models"]["finetuned"], "command": shlex.join(cmd[1:]),
            "train_seconds": round(seconds, 1), "epochs": sparse + finetune,
            "recipe": f"sparse {sparse} + fine-tune {finetune} epochs, to {goal}"}


# ------------------------------------------------------------------------------------------------ figures


def onnx_figures(s: Setup, weights: str, onnx: Path, imgsz: int | None = None) -> dict:
    """Export a row's weights to a fixed-shape ONNX at their own size, or `imgsz` (parity checked on two val images
    and recorded), then its size, FLOPs and its mAP on the val split as ONNX Runtime runs it."""
    model, meta = load_model(weights)
    imgsz = int(imgsz or meta.get("imgsz") or s.imgsz)
    data = load_data_yaml(s.data)
    export_onnx(model, onnx, imgsz=imgsz, metadata=meta)
    rep = check_parity(model, onnx, list(data.val)[:2], raise_on_fail=False)
    if not rep.passed:  # as the pipeline's report: recorded and flagged in the map, not a stop (toy models fail it)
        print(f"WARNING {onnx}: the ONNX file does not match PyTorch: {rep.summary()}", flush=True)
    info = model_info(model, imgsz)
    arch = architecture(model)
    return {"parity_passed": rep.passed, "parity": rep.summary(), "onnx": str(onnx),
            "onnx_mb": round(onnx.stat().st_size / 1e6, 3), "params": info["params"],
            "gflops": round(info["gflops"], 4), "imgsz": imgsz, "input": from_meta(meta).text, "arch": arch,
            "arch_check": arch_check(onnx, arch, imgsz, s.report_runs * 3), **score(s, onnx, imgsz)}


def architecture(model: DetectionModel) -> dict:
    """What rebuilds the model's network exactly (yaml, channel counts, input convention), as JSON."""
    return {"yaml": plain(model.yaml, for_json=True), "shapes": module_shapes(model),
            "input": getattr(model, "input_convention", DEFAULT_CONVENTION).as_dict()}


def arch_onnx(arch: dict, imgsz: int, out: Path) -> Path:
    """The architecture rebuilt with untrained weights and exported as the row's own ONNX is (same size, same
    convention): what the map times when the trained file is not in this checkout."""
    model = DetectionModel(arch["yaml"], shapes=arch["shapes"])
    model.input_convention = InputConvention(**arch["input"])
    out.parent.mkdir(parents=True, exist_ok=True)
    export_onnx(model.eval(), out, imgsz=imgsz, metadata={"imgsz": imgsz})
    return out


def arch_check(onnx: Path, arch: dict, imgsz: int, runs: int) -> dict:
    """The trained ONNX and its architecture rebuilt untrained, timed interleaved (ORT, one thread): the evidence
    that timing the architecture stands for timing the row."""
    rebuilt = arch_onnx(arch, imgsz, onnx.with_name(f"{onnx.stem}{ARCH_SUFFIX}.onnx"))
    lat = benchmark({"trained": OnnxRunner(onnx, threads=1), "arch": OnnxRunner(rebuilt, threads=1)},
                    runs=max(30, runs), warmup=5)
    ratio = lat["arch"]["median_ms"] / lat["trained"]["median_ms"]
    return {"trained_ms": lat["trained"]["median_ms"], "arch_ms": lat["arch"]["median_ms"],
            "arch_over_trained": round(ratio, 4), "runs": max(30, runs)}


def score(s: Setup, onnx: Path | str, imgsz: int) -> dict:
    res = evaluate(OnnxDetector(onnx), load_data_yaml(s.data), imgsz=imgsz, batch_size=8, workers=0, progress=False)
    return {"map50": float(res["map50"]), "map": float(res["map"])}


def read_row(s: Setup, row: str) -> dict | None:
    """The row's recorded figures (None when it has no record), its kept files as absolute paths and "onnx" the
    trained model's ONNX (exported again from the kept weights when needed), None when this checkout does not hold
    the trained model."""
    path = s.records / f"{row}.json"
    if not path.is_file():
        return None
    figures = json.loads(path.read_text())["figures"]
    if figures.get("status") == "not offered":
        return figures
    onnx = trained_onnx(s, row, figures)
    return {**figures, **kept_paths(s.records, figures), "onnx": str(onnx) if onnx else None}


def trained_row(s: Setup, row: str) -> dict:
    """The row with its trained model, for a row that builds on it: trained again (and recorded again) when this
    checkout holds only its record; models are not committed."""
    have = read_row(s, row)
    if have is not None and have.get("onnx"):
        return have
    if have is not None:
        print(f"row {row}: recorded, but its trained model is not in this checkout (models are not committed) and "
              "another row builds on it: built again", flush=True)
    return build_row(s, row)


def kept_paths(records: Path, figures: dict) -> dict:
    """The record's `weights` / `onnx` resolved beside it (an absolute path, as older records hold, stays one)."""
    return {k: str(records / figures[k]) for k in ("weights", "onnx") if figures.get(k)}


def trained_onnx(s: Setup, row: str, figures: dict) -> Path | None:
    """The row's trained ONNX: kept beside the record (int8 rows), in its run folder, or exported again from the
    kept weights at the recorded size (parity is not re-checked: it was checked and recorded when the row was
    built); None when this checkout holds none of them."""
    files = kept_paths(s.records, figures)
    if files.get("onnx") and Path(files["onnx"]).is_file():
        return Path(files["onnx"])
    onnx = s.project / row / f"{row}.onnx"
    if not onnx.is_file() and files.get("weights") and Path(files["weights"]).is_file():
        model, meta = load_model(files["weights"])
        onnx.parent.mkdir(parents=True, exist_ok=True)
        export_onnx(model, onnx, imgsz=int(figures["imgsz"]), metadata=meta)
    return onnx if onnx.is_file() else None


def row_onnx(s: Setup, row: str, figures: dict) -> Path | None:
    """What the map times for a row: its trained ONNX, else its recorded architecture rebuilt untrained (an int8 row:
    quantised as it was, calibrated on the data's train images); None for a record older than kept architectures."""
    onnx = trained_onnx(s, row, figures)
    if onnx is not None:
        return onnx
    arch = figures.get("arch")
    if not arch:
        return None
    out = s.project / row / f"{row}{ARCH_SUFFIX}.onnx"
    if out.is_file():
        return out
    imgsz = int(figures["imgsz"])
    if not figures.get("int8"):
        return arch_onnx(arch, imgsz, out)
    fp32 = arch_onnx(arch, imgsz, out.with_name(f"{row}{ARCH_SUFFIX}-fp32.onnx"))
    config = Int8Config(**figures["int8"]["variant"])
    quantize_int8(fp32, out, list(load_data_yaml(s.data).train)[: config.images], config, imgsz=imgsz)
    return out


def keep_files(s: Setup, row: str, figures: dict) -> dict:
    """Copy what a later sitting needs beside the record and name it relative to it: the int8 ONNX of an int8 row,
    else the weights (stripped to fp16: a yolov5n is 3.8 MB) with no ONNX path (it is exported again)."""
    if figures.get("status") == "not offered":
        return figures
    if figures.get("int8"):
        write_attachment(Path(figures["onnx"]), f"{row}.onnx", s.records)
        return {**figures, "onnx": f"{row}.onnx"}
    strip_checkpoint(figures["weights"], s.records / f"{row}.pt")
    return {**figures, "weights": f"{row}.pt", "onnx": None, "run_weights": figures["weights"]}


def save_row(s: Setup, row: str, label: str, figures: dict) -> dict:
    """The row's record (<records>/<row>.json + .md): what it is, its epochs and seed, its figures."""
    figures = keep_files(s, row, {"row": row, "label": label, "seed": s.seed, "budget_epochs": s.epochs, **figures})
    if figures.get("status") == "not offered":
        md = f"### Pareto row {row}: {label}\n\nNot offered: {figures['message']}"
    else:
        md = (f"### Pareto row {row}: {label}\n\n{figures['epochs_text']}, seed {s.seed}, {figures['imgsz']} px "
              f"({figures['input']}): mAP50 {figures['map50']:.3f}, mAP50-95 {figures['map']:.3f}, "
              f"{figures['params'] / 1e6:.3f} M params, {figures['gflops']:.3f} GFLOPs, {figures['onnx_mb']:.2f} MB")
    write_result(row, figures, md, out_dir=s.records)
    print(md, flush=True)
    return figures


# ------------------------------------------------------------------------------------------------ builders


def trained(start: Callable[[Setup], list[str]], fv2: bool = False, how: str = "") -> Callable[[Setup, str], dict]:
    def build(s: Setup, row: str) -> dict:
        t = train(s, row, start(s), s.fv2_imgsz if fv2 else s.imgsz)
        fig = onnx_figures(s, t["weights"], s.project / row / f"{row}.onnx")
        return {**t, **fig, "epochs_text": f"{t['epochs']} epochs {how}".strip()}

    return build


def pruned(parent: str, amount: str, fv2: bool = False, imgsz: int | None = None) -> Callable[[Setup, str], dict]:
    """The pipeline on yolov5n.pt or a trained row, to `amount`: "flops=F" (--target-flops F) or "latency=MS" (a
    measured budget on this machine, --target-latency MS with width and depth moves); trained and scored at `imgsz`
    when given (the family's own size otherwise)."""
    kind, value = amount.split("=")
    flags = {"flops": ["--target-flops", value],
             "latency": ["--target-latency", value, "--latency-moves", "width,depth"]}[kind]  # fmt: skip
    goal = f"{float(value):g}x FLOPs" if kind == "flops" else f"a {value} ms budget (width and depth moves)"

    def build(s: Setup, row: str) -> dict:
        size = min(imgsz, s.imgsz) if imgsz else s.fv2_imgsz if fv2 else s.imgsz
        amount_flags, words = flags, goal
        if kind == "latency" and s.smoke:  # the toy model at 64 px runs in well under any real budget
            amount_flags, words = ["--target-speedup", "1.3", "--latency-moves", "width,depth"], "1.3x (smoke)"
        src = str(s.weights) if parent == "yolov5n.pt" else trained_row(s, parent)["weights"]
        p = pipeline(s, row, src, size, amount_flags, words)
        fig = onnx_figures(s, p["weights"], s.project / row / f"{row}.onnx")
        before = "" if parent == "yolov5n.pt" else f" on {parent} ({read_row(s, parent)['epochs']} epochs)"
        at = f", trained at {size} px" if imgsz else ""
        return {**p, **fig, "parent": parent, "epochs_text": p["recipe"] + at + before}

    return build


def resized(parent: str, imgsz: int) -> Callable[[Setup, str], dict]:
    """The parent row's trained weights run at a smaller input, not retrained: the cheapest speed knob there is
    (the work of every layer scales with the pixels), and its price in mAP on the user's data."""
    def build(s: Setup, row: str) -> dict:
        src = trained_row(s, parent)
        size = min(imgsz, s.imgsz)  # --smoke trains at 64 px: its toy rows stay there
        fig = onnx_figures(s, src["weights"], s.project / row / f"{row}.onnx", imgsz=size)
        keep = ("epochs", "train_seconds")
        return {**{k: src[k] for k in keep if k in src}, **fig, "weights": src["weights"], "parent": parent,
                "epochs_text": f"{parent} ({src['epochs_text']}) run at {size} px, not retrained"}

    return build


def int8(parent: str) -> Callable[[Setup, str], dict]:
    """quantize_best on the parent row's ONNX: the fastest int8 variant kept (said when it loses accuracy)."""
    def build(s: Setup, row: str) -> dict:
        fp32 = trained_row(s, parent)
        out = s.project / row / f"{row}.onnx"
        out.parent.mkdir(parents=True, exist_ok=True)
        res = quantize_best(fp32["onnx"], s.data, out, imgsz=fp32["imgsz"], keep_best_measured=True)
        if not res["path"]:
            sys.exit(f"row {row}: no int8 variant of {fp32['onnx']} could be built ({res['reason']})")
        m = res["metrics"] or score(s, out, fp32["imgsz"])
        keep = ("params", "gflops", "imgsz", "input", "epochs", "epochs_text", "train_seconds", "arch")
        return {**{k: fp32[k] for k in keep if k in fp32}, "parent": parent, "onnx": str(out),
                "onnx_mb": round(out.stat().st_size / 1e6, 3), "map50": float(m["map50"]), "map": float(m["map"]),
                "int8": {"variant": res["notes"].get("int8"), "holds_accuracy": res["chosen"],
                         "reason": res["reason"]}}

    return build


def distilled(s: Setup, row: str) -> dict:
    """YOLO-FastestV2 from the backbone with the unpruned yolov5n as --teacher, or 'not offered' with the one-line
    reason the trainer gives when it refuses that teacher."""
    teacher = trained_row(s, YARDSTICK)["weights"]
    student = build_model("yolo-fastestv2", nc=load_data_yaml(s.data).nc)
    try:
        check_compatible(load_model(teacher)[0], student, teacher)
    except TeacherError as e:
        return {"status": "not offered", "message": str(e), "teacher": teacher}
    return trained(lambda s: [*fv2_start(s), "--teacher", teacher], fv2=True, how="(with --teacher yolov5n)")(s, row)


def fv2_start(s: Setup) -> list[str]:
    return ["--cfg", "yolo-fastestv2.yaml", "--backbone", str(s.backbone)]


ROWS = {r.name: r for r in (
    Row(YARDSTICK, "yolov5n, unpruned (the yardstick): yolov5n.pt fine-tuned",
        trained(lambda s: ["--weights", str(s.weights)], how="from yolov5n.pt")),
    Row("yolov5n-p70", "yolov5n pruned to 0.7x FLOPs (pipeline)", pruned("yolov5n.pt", "flops=0.7")),
    Row("yolov5n-p70-int8", "yolov5n 0.7x FLOPs, int8", int8("yolov5n-p70"), ("yolov5n-p70",)),
    Row("yolov5n-p50", "yolov5n pruned to 0.5x FLOPs (pipeline)", pruned("yolov5n.pt", "flops=0.5")),
    Row("yolov5n-p50-int8", "yolov5n 0.5x FLOPs, int8", int8("yolov5n-p50"), ("yolov5n-p50",)),
    Row("yolov5n-3ms-256", "yolov5n pruned to a 3 ms budget at 256 px (pipeline --target-latency 3, trained at 256)",
        pruned("yolov5n.pt", "latency=3", imgsz=256)),
    Row("v5lite-s", "YOLOv5-Lite-s-like (ShuffleNetV2 backbone), from scratch",
        trained(lambda s: ["--cfg", "v5lite-s.yaml"], how="from scratch")),
    Row("yolov5n-shufflenetv2", "yolov5n on a ShuffleNetV2 backbone, from scratch",
        trained(lambda s: ["--cfg", "yolov5n-shufflenetv2.yaml"], how="from scratch")),
    Row("fastestv2", "YOLO-FastestV2 from the ImageNet backbone",
        trained(fv2_start, fv2=True, how="from the ImageNet backbone")),
    Row("fastestv2-teacher", "YOLO-FastestV2 from the ImageNet backbone, --teacher the unpruned yolov5n", distilled,
        (YARDSTICK,)),
    Row("fastestv2-p70", "YOLO-FastestV2 pruned to 0.7x FLOPs (pipeline on the trained one)",
        pruned("fastestv2", "flops=0.7", fv2=True), ("fastestv2",)),
    Row("yolov5n-p70-256", "yolov5n 0.7x FLOPs at 256 px (not retrained)", resized("yolov5n-p70", 256),
        ("yolov5n-p70",)),
    Row("yolov5n-p50-256", "yolov5n 0.5x FLOPs at 256 px (not retrained)", resized("yolov5n-p50", 256),
        ("yolov5n-p50",)),
    Row("fastestv2-256", "YOLO-FastestV2 at 256 px (not retrained)", resized("fastestv2", 256), ("fastestv2",)),
    Row("fastestv2-p70-256", "YOLO-FastestV2 0.7x FLOPs at 256 px (not retrained)", resized("fastestv2-p70", 256),
        ("fastestv2-p70",)),
)}


def ensure(s: Setup, row: str) -> dict:
    """The row's record: built (what it needs first) when it has none; a recorded row is not built again, whether
    or not this checkout holds its trained model (the map times its architecture then)."""
    have = read_row(s, row)
    if have is not None:
        if (have.get("seed"), have.get("budget_epochs")) != (s.seed, s.epochs) and row not in s.built:
            sys.exit(f"row {row}: recorded with seed {have.get('seed')}, {have.get('budget_epochs')} epochs in "
                     f"{s.records / (row + '.json')}; this run asks seed {s.seed}, {s.epochs} epochs (give another "
                     "--out and --project, or remove that record)")
        return have
    return build_row(s, row)


def build_row(s: Setup, row: str) -> dict:
    """Build the row (first the rows it needs that have no record), record it and return the record."""
    spec = ROWS[row]
    for need in spec.needs:
        ensure(s, need)
    t0 = time.perf_counter()
    figures = spec.build(s, row)
    figures["wall_seconds"] = round(time.perf_counter() - t0, 1)
    s.built.append(row)
    save_row(s, row, spec.label, figures)
    return read_row(s, row)
