"""The whole path in one run folder: baseline -> sparse training -> prune -> fine-tune -> export -> report.

Each stage writes into its own sub-folder and is recorded in pipeline.json with a key made from its
parameters and the key of the stage before it. Re-running the same command skips finished stages, resumes an
interrupted training stage from its last.pt, and redoes (saying so) every stage whose inputs changed.

Knowledge distillation (`--teacher`): `unpruned` fine-tunes the pruned model against the outputs of the model
it was pruned from (the prune stage's input: the sparse-trained model, or --weights with --sparse-epochs 0) as
well as the labels; a path uses that checkpoint instead; `none` (default, until the recovery benchmark
bench/recovery.py shows the teacher at least matching label-only recovery) trains on labels alone. The choice
and `--distill-weight` are part of the fine-tune stage's key, so changing them redoes that stage.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from torch import nn

from finetune.trainer import TrainOptions, finished_run, train
from pipeline.cut import channel_cut, round_amount, structural_moves
from pipeline.latency import check_budget
from pipeline.options import PRUNE_KEYS, TEACHER_CHOICES, PipelineError, PipelineOptions
from pipeline.state import PipelineState, file_id, resolve_run_dir, stage_key
from prune.config import PruneError
from prune.graph import resolve_ignore
from prune.latency_moves import parse_moves
from prune.runs import save_pruned
from yolo.checkpoint import load_model, strip_checkpoint
from yolo.data import load_data_yaml
from yolo.errors import classes_text, raise_if_terminated
from yolo.fastestv2_loss import family_optimizer
from yolo.fileio import atomic_write_text
from yolo.flops import model_info
from yolo.hyp import load_hyp
from yolo.model import build_model
from yolo.val import evaluate

if TYPE_CHECKING:
    from reports.report import ModelEntry


def _train_args(opt: PipelineOptions, run_dir: Path, name: str, epochs: int, **kw: Any) -> dict:
    """The finetune.py arguments of a training stage (its run folder is <run>/<stage>)."""
    args = {
        "data": opt.data, "imgsz": opt.imgsz, "batch_size": opt.batch_size, "device": opt.device,
        "workers": opt.workers, "cache": opt.cache, "seed": opt.seed, "hyp": opt.hyp, "nbs": opt.nbs,
        "optimizer": opt.optimizer, "cos_lr": opt.cos_lr, "epochs": epochs, "project": str(run_dir), "name": name,
        "exist_ok": True, "quiet": opt.quiet, "val_every": opt.val_every, "threads": opt.train_threads,
    }
    args.update(kw)
    return args


class Pipeline:
    """Runs the stages in order, each one skipped, resumed or redone according to pipeline.json."""

    def __init__(self, opt: PipelineOptions, run_dir: Path, log: Callable[[str], None] = print,
                 budget: dict | None = None, family_optimizer_keyed_none: bool = False):
        self.opt = opt.validate()
        self.budget = budget  # check_inputs' latency facts (the FLOPs equivalent a targeted sparse stage aims at)
        self.run_dir = Path(run_dir)
        self.state = PipelineState(self.run_dir)
        self.log = log
        self._upstream = ""
        # Stages of a run made while the family's optimizer was keyed as None (before run_pipeline named it) are
        # also matched on that older key chain, when this run trains with the family's optimizer, until a stage has
        # to be redone.
        self._legacy: str | None = "" if family_optimizer_keyed_none else None

    # ---------------------------------------------------------------- stage mechanics
    def _stage(self, name: str, params: dict, body: Callable[[bool], dict]) -> dict:
        raise_if_terminated()  # a SIGTERM that an earlier stage's clean-up swallowed still stops the run here
        key = stage_key(params, self._upstream)
        status = self.state.status(name, key)
        self._upstream = key
        legacy = None if self._legacy is None else stage_key(_optimizer_keyed_none(params), self._legacy)
        older = "new" if legacy is None else self.state.status(name, legacy)
        if status in ("new", "changed") and older in ("done", "resume"):
            key, status = legacy, older  # recorded under the older key: the same inputs
        self._legacy = legacy if status in ("done", "resume") else None
        if status == "done":
            self.log(f"[{name}] already done with these inputs: skipped")
            return self.state.outputs(name)
        if status == "changed":
            self.log(f"[{name}] inputs changed since the last run: redoing this stage (and the ones after it)")
        elif status == "resume":
            self.log(f"[{name}] was interrupted: resuming")
        else:
            self.log(f"[{name}] running")
        self.state.begin(name, key, params)
        t0 = time.time()
        try:
            outputs = body(status == "resume")
        except BaseException:
            self.state.stop(name)
            raise
        self.state.finish(name, outputs)
        rec = self.state.stages[name]
        total = f" ({rec.seconds:.0f} s over {rec.attempts} attempts)" if rec.attempts > 1 else ""
        self.log(f"[{name}] done in {time.time() - t0:.0f} s{total}")
        return outputs

    def _train(self, stage: str, resume: bool, **kw: Any) -> dict:
        args = _train_args(self.opt, self.run_dir, stage, **kw)
        last = self.run_dir / stage / "weights" / "last.pt"
        if resume and last.is_file():
            args["resume"] = str(last)
        elif (self.run_dir / stage).exists():
            _clear_dir(self.run_dir / stage)
        res = (resume and last.is_file() and finished_run(last)) or train(TrainOptions.from_any(args))
        best = res.best if res.best and Path(res.best).is_file() else res.last
        final = strip_checkpoint(res.last, Path(res.last).with_name("final.pt"))  # last weights, no train state
        return {"last": str(res.last), "final": str(final), "best": str(best), "metrics": _brief(res.metrics),
                "epochs": res.epochs, "optimizer_steps": res.optimizer_steps}

    # ---------------------------------------------------------------- stages
    def run(self) -> dict:
        o = self.opt
        start = {"weights": file_id(o.weights), "cfg": o.cfg, "data": file_id(o.data), "imgsz": o.imgsz}
        baseline = self._stage("baseline", start, lambda r: self._baseline())
        train_common = {"batch": o.batch_size, "seed": o.seed, "hyp": file_id(o.hyp), "nbs": o.nbs,
                        "optimizer": o.optimizer, "cos_lr": o.cos_lr}
        root = self._upstream, self._legacy
        dense = None
        if o.dense_epochs > 0:
            dense = self._stage("dense", {**train_common, "epochs": o.dense_epochs},
                                lambda r: self._train("dense", r, epochs=o.dense_epochs, **self._start_weights()))
            self._upstream, self._legacy = root  # the dense model is a side branch: it does not feed the sparse stage
        prune_params = {k: getattr(o, k) for k in PRUNE_KEYS}
        prune_params.update({k: getattr(o, k) for k in ("depth", "drop_scale") if getattr(o, k) is not None})
        prune_params.update(o.latency_key)
        if o.sparse_epochs > 0:
            sparse_params = {**train_common, "epochs": o.sparse_epochs, "sparsity": o.sparsity,
                             "schedule": o.sparsity_schedule, "val_every": o.val_every}
            window = self._lr_window(0)
            if window:  # only then in the key: runs made before the continuous schedule keep their stage
                sparse_params["lr_window"] = window
            target = {}
            if o.sparsity_mode == "targeted":  # only then in the key: earlier uniform runs keep their stage
                sparse_params["target"], target = self._sparse_target(prune_params)
            sparse = self._stage(
                "sparse", sparse_params,
                lambda r: self._train("sparse", r, epochs=o.sparse_epochs, sparsity=o.sparsity,
                                      sparsity_schedule=o.sparsity_schedule, sparsity_target=target,
                                      **window, **self._start_weights()),
            )
            prunable = sparse.get("final", sparse["last"])
        else:
            prunable = o.weights
        teacher = o.teacher_path(prunable)
        current, pruned, finetuned = prunable, {}, {}
        done_epochs = max(o.sparse_epochs, 0)  # of the shared LR schedule, with --lr-schedule continuous
        for r in range(1, o.rounds + 1):
            last_round = r == o.rounds
            tag = "" if last_round else f"_r{r}"
            step = dict(prune_params) if o.rounds == 1 else {**prune_params, "round": r, "rounds": o.rounds}
            src = current
            pruned = self._stage("prune" + tag, step, lambda _r, src=src, r=r: self._prune(src, prunable, r))
            epochs = o.finetune_epochs - (o.rounds - 1) * (o.finetune_epochs // o.rounds) if last_round \
                else o.finetune_epochs // o.rounds
            finetuned = self._finetune_stage("finetune" + tag, pruned["weights"], epochs, teacher, prunable,
                                             train_common, self._lr_window(done_epochs))
            done_epochs += epochs
            current = finetuned["best"] if last_round else finetuned.get("final", finetuned["best"])
        models = {"baseline": prunable, "pruned": pruned["weights"], "finetuned": finetuned["best"]}
        if dense:
            models["dense"] = dense["best"]
        report_key = {"int8": o.int8, "runs": o.latency_runs, "threads": o.threads, "models": sorted(models)}
        if o.formats:  # only then in the key: runs made before --formats existed keep their finished report
            report_key["formats"] = list(o.formats)
        report = self._stage("report", report_key,
                             lambda r: self._report(models))
        summary = {"run_dir": str(self.run_dir), "baseline": baseline, "models": models, "report": report}
        atomic_write_text(self.run_dir / "summary.json", json.dumps(summary, indent=2, default=str))
        return summary

    def _sparse_target(self, prune_params: dict) -> tuple[dict, dict]:
        """(the sparse stage key's target, the target it trains with): the cut's amount and floors; a latency budget
        keys on itself (not on tolerance or moves: the width-only equivalent does not read them)."""
        o = self.opt
        target = {k: prune_params[k] for k in ("ratio", "target_flops", "target_params", "min_keep", "round_to",
                                               "ignore")}  # fmt: skip
        aim = {k: v for k, v in o.latency_key.items() if k not in ("latency_tolerance", "latency_moves")}
        return {**target, **aim}, {**target, **self._latency_target()}

    def _latency_target(self) -> dict:
        """A latency amount in a targeted sparse stage pushes the channels of the width-only plan for the budget,
        as the FLOPs fraction that plan keeps (pipeline.latency.check_budget): both plans cut one global order of
        the gammas, so they name the same channels; the prune stage then times the cut and corrects it."""
        if not self.opt.latency_key:
            return {}
        if self.budget is None:
            self.budget = check_inputs(self.opt, self.log)
        return {"target_flops": self.budget["flops_equivalent"]}

    def _lr_window(self, start: int) -> dict:
        """--lr-schedule continuous: the sparse stage and the fine-tune(s) are windows of one LR schedule over all
        their epochs, so the sparse stage does not anneal to a minimum that the fine-tune's fresh schedule then
        throws the cut model out of (each fine-tune still warms up). {} for restart."""
        o = self.opt
        if o.lr_schedule != "continuous":
            return {}
        return {"schedule_start": start, "schedule_epochs": max(o.sparse_epochs, 0) + o.finetune_epochs}

    def _finetune_stage(self, name: str, weights: str, epochs: int, teacher: str, prunable: str,
                        train_common: dict, window: dict | None = None) -> dict:
        o = self.opt
        if epochs <= 0:
            return {"best": weights}
        params: dict[str, Any] = {**train_common, "epochs": epochs, "val_every": o.val_every}
        kw: dict[str, Any] = {"epochs": epochs, "weights": weights, **(window or {})}
        if window:  # only then in the key
            params["lr_window"] = window
        if o.finetune_hyp:  # only then in the key, like the teacher
            params["hyp"] = file_id(o.finetune_hyp)
            kw["hyp"] = o.finetune_hyp
        if o.close_mosaic:  # only then in the key
            params["close_mosaic"] = kw["close_mosaic"] = o.close_mosaic
        if teacher:  # only then in the key: runs made before distillation existed keep their finished stage
            params.update(teacher="unpruned" if teacher == prunable else file_id(teacher),
                          distill_weight=o.distill_weight)
            kw["teacher"] = teacher
            if o.distill_weight is not None:
                kw["hyp_overrides"] = {"distill": o.distill_weight}
        return self._stage(name, params, lambda r: self._train(name, r, **kw))

    def _start_weights(self) -> dict:
        return {"weights": self.opt.weights} if self.opt.weights else {"cfg": self.opt.cfg}

    def _baseline(self) -> dict:
        """Score the starting checkpoint when its classes match the data (else: transfer learning, said once)."""
        o = self.opt
        if not o.weights:
            return {"note": f"training from scratch ({o.cfg}): no starting model to score"}
        model, meta = load_model(o.weights)
        data = load_data_yaml(o.data)
        info = model_info(model, o.imgsz)
        if model.nc != data.nc:
            trains = "sparse" if o.sparse_epochs > 0 else "fine-tune"
            self.log(f"[baseline] {o.weights} predicts {classes_text(model.nc)}, {o.data} has {data.nc}: "
                     f"transfer learning, the {trains} stage trains a new Detect head")
            return {"info": info, "note": "class count differs from the data: transfer learning"}
        res = evaluate(model, data, imgsz=o.imgsz, batch_size=o.batch_size, device=o.device,
                       workers=o.eval_workers)
        _save_json(self.run_dir / "baseline" / "metrics.json", res)
        self.log(f"[baseline] mAP50 {res['map50']:.3f}  mAP50-95 {res['map']:.3f}  "
                 f"{info['params'] / 1e6:.2f}M params  {info['gflops']:.2f} GFLOPs")
        return {"info": info, "metrics": _brief(res)}

    def _prune(self, weights: str, original: str, r: int = 1) -> dict:
        """Prune `weights`; in round r of R, toward the target's r/R geometric step measured on `original`."""
        o = self.opt
        model, meta = load_model(weights)
        cfg = o.prune_config(round_amount(o.amount, o.rounds, r, model, original, o.imgsz))
        data = load_data_yaml(o.data)
        model, steps = structural_moves(model, data, cfg, o.drop_scale, o.depth) if r == 1 else (model, [])
        latency = {"threads": o.latency_threads, "path": o.latency_table, "tolerance": o.latency_tolerance,
                   "moves": o.latency_moves}  # fmt: skip
        pruned, table = channel_cut(model, cfg, data, latency, log=self.log)
        out_dir = self.run_dir / ("prune" if r == o.rounds else f"prune_r{r}")
        path = save_pruned(out_dir, pruned, meta, table, cfg, steps=steps)
        summary = table.summary_line() if hasattr(table, "summary_line") else ""
        if pruned.nc != data.nc:  # --sparse-epochs 0 from a checkpoint of other classes: transfer in the fine-tune
            self.log(f"[prune] {summary}; not scored: the model predicts {classes_text(pruned.nc)}, {o.data} has "
                     f"{data.nc} (the fine-tune stage trains a new Detect head)")
            return {"weights": str(path), "metrics": {}}
        res = evaluate(pruned, data, imgsz=o.imgsz, batch_size=o.batch_size, device=o.device,
                       workers=o.eval_workers)
        _save_json(out_dir / "metrics.json", res)
        self.log(f"[prune] {summary} before fine-tuning: mAP50 {res['map50']:.3f} mAP50-95 {res['map']:.3f}")
        return {"weights": str(path), "metrics": _brief(res)}

    def _report(self, models: dict[str, str]) -> dict:
        # start-up: reports/ loads matplotlib and onnx, which only the report stage needs
        from reports.measure import build_entries
        from reports.report import write_report

        o = self.opt
        out = self.run_dir / "report"
        threads = [t or None for t in o.threads]
        derive = self._formats if (o.int8 or o.formats) else None
        entries = build_entries(models, out, data=o.data, imgsz=o.imgsz, threads=threads, runs=o.latency_runs,
                                eval_kwargs={"batch_size": o.batch_size, "workers": o.eval_workers}, log=self.log,
                                skip_other_classes=True, derive=derive)
        paths = write_report(out, entries, args=asdict(o), extras=self._budget_extras())
        return {k: str(v) for k, v in paths.items()}

    def _budget_extras(self) -> dict:
        """A latency amount's budget, prediction and timing from the prune table, for the report to state."""
        table = self.run_dir / "prune" / "prune_table.json"
        if not self.opt.prune_config(self.opt.amount).wants_latency or not table.is_file():
            return {}
        totals = json.loads(table.read_text()).get("totals", {})
        latency = {k: v for k, v in (totals.get("latency") or {}).items() if k != "iterations"}
        return {"latency_budget": {**latency, "request": totals.get("request")}} if latency else {}

    def _formats(self, entries: list[ModelEntry], images: list) -> list[ModelEntry]:
        # start-up: the quantiser and the optional runtimes load only for --int8 / --formats
        from pipeline.formats import format_entries

        o = self.opt
        return format_entries(entries, images, load_data_yaml(o.data), o.imgsz, o.formats, o.int8, log=self.log)


def _optimizer_keyed_none(params: dict) -> dict:
    return {**params, "optimizer": None} if "optimizer" in params else params


def _brief(metrics: dict | None) -> dict:
    keys = ("map50", "map", "precision", "recall")
    return {k: float(metrics[k]) for k in keys if metrics and k in metrics}


def _save_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=str))


def _clear_dir(path: Path) -> None:
    shutil.rmtree(path)


def start_model(opt: PipelineOptions) -> nn.Module:
    """The model the run starts from: --weights loaded (safely), else built from --cfg."""
    return load_model(opt.weights)[0] if opt.weights else build_model(opt.cfg)


def check_inputs(
    opt: PipelineOptions, log: Callable[[str], None] = print, model: nn.Module | None = None
) -> dict | None:
    """Read every input file once before a run folder exists: the data.yaml, the checkpoint or model yaml, the
    hyp files, a teacher, and match the --ignore globs; a latency budget is checked against the floor (the latency
    table built or reused: a cache outside the run folder). A bad one stops the run with its own one-line error
    instead of leaving a folder with a stage marked running, or failing a later stage after the sparse training.
    Returns check_budget's facts for a latency amount. `model`: the start model when the caller has loaded it."""
    load_data_yaml(opt.data)
    model = start_model(opt) if model is None else model
    for hyp in (opt.hyp, opt.finetune_hyp):
        if hyp:
            load_hyp(hyp)
    if opt.ignore:
        resolve_ignore(model, opt.ignore)
    if opt.teacher not in TEACHER_CHOICES:
        load_model(opt.teacher)
    if not opt.latency_key:
        return None
    try:
        return check_budget(model.eval(), opt.prune_config(opt.amount), opt.latency_threads, opt.latency_table,
                            scale=opt.drop_scale, depth=opt.depth, moves=parse_moves(opt.latency_moves), log=log)
    except PruneError as e:
        raise PipelineError(str(e)) from None


def resolved_optimizer(opt: PipelineOptions, model: nn.Module | None = None) -> str:
    """--optimizer, else the start model's family's (SGD; AdamW for YOLO-FastestV2): the stage keys name the
    optimizer that trains, so a run keyed "SGD" (before the family default) resumes and None never stands for two
    optimizers; a run keyed None (while it did) still resumes through Pipeline's older key chain."""
    if opt.optimizer:
        return opt.optimizer
    return family_optimizer(start_model(opt) if model is None else model)


def run_pipeline(opt: PipelineOptions, new: bool = False, log: Callable[[str], None] = print) -> dict:
    opt.validate()
    model = start_model(opt)  # loaded once for the checks and the family's optimizer
    family = resolved_optimizer(replace(opt, optimizer=None), model)
    budget = check_inputs(opt, log, model)
    named = replace(opt, optimizer=opt.optimizer or family)  # a copy: the caller's options stay as they were given
    run_dir = resolve_run_dir(opt.project, opt.name, new)
    log(f"pipeline run folder: {run_dir}")
    return Pipeline(named, run_dir, log, budget, family_optimizer_keyed_none=named.optimizer == family).run()
