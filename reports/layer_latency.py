"""A latency model of this machine: each convolution timed alone in ONNX Runtime at candidate widths.

Why per layer: a plan searching for a latency budget evaluates thousands of width configurations; exporting and
timing each whole model would take minutes per step. So every convolution of the model (BatchNorm folded, with its
activation, as the exported graph runs it) is built as a one-op ONNX graph at a grid of (input, output) channel
counts and timed once; a configuration's latency is then the sum of its layers' interpolated times plus the part
no width changes (input copy, Detect decode, concat, upsampling). Timed alone, each conv also pays a per-call cost
(binding its input and output) that a whole model does not pay once per layer, so the conv sum is scaled too:
`latency = s * convs + a + b * activations` (activation elements written by the convs), fitted to whole-model
timings with s, a, b >= 0 (`fit_rest`): from the full model alone (a when the convs undercount it, s when they
overcount), or from the calibration models as well (pipeline.latency: six cuts, the narrowest up), which pin
the slope and average out the noise of any one timing.

The table is only valid for the machine, runtime and settings it was measured with, so it carries a key (CPU
model and SIMD flags, ONNX Runtime version, threads, input size, grid rounding, the model's layer geometry); a
table whose key differs is rebuilt and `key_changes` says which part changed.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper
from torch import nn

from reports.export import export_onnx
from reports.latency import OnnxRunner, benchmark, cpu_info
from yolo.fileio import atomic_write_text
from yolo.imgsz import to_shape

FORMAT = "yolov5-slim.latency-table/3"  # /3: fitted on seven whole models (older tables are profiled again)
FRACTIONS = (1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125)
CACHE_DIR = Path.home() / ".cache" / "yolov5-slim" / "latency"
SESSIONS = 3  # ONNX Runtime sessions per model when whole models are timed (measure_models)
Widths = Mapping[str, tuple[int, int]]  # conv module name -> (input channels, output channels)


@dataclass(frozen=True)
class ConvSpec:
    """One convolution as the exported graph runs it (BatchNorm folded into a bias, then its activation)."""

    cin: int
    cout: int
    k: tuple[int, int]
    stride: tuple[int, int]
    pad: tuple[int, int]
    groups: int
    h: int  # input height and width at the profiled size
    w: int
    out_hw: int  # output pixels
    act: str  # 'silu', 'relu', 'leaky', 'none'
    fixed_out: bool  # output channels no cut changes (Detect's outputs)

    @property
    def depthwise(self) -> bool:
        return self.groups > 1 and self.groups == self.cin == self.cout


def _act_name(parent: nn.Module | None) -> str:
    act = getattr(parent, "act", None)
    for cls, name in ((nn.SiLU, "silu"), (nn.ReLU, "relu"), (nn.LeakyReLU, "leaky")):
        if isinstance(act, cls):
            return name
    return "none"


def conv_specs(model: nn.Module, imgsz: int | Sequence[int]) -> dict[str, ConvSpec]:
    """Every nn.Conv2d of `model` with its input size at `imgsz` (one forward pass with hooks)."""
    shapes: dict[str, tuple[int, int, int]] = {}
    mods = dict(model.named_modules())
    hooks = []
    for n, m in mods.items():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(
                lambda mod, i, o, n=n: shapes.__setitem__(n, (*i[0].shape[-2:], o.shape[-2] * o.shape[-1]))
            ))  # fmt: skip
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, *to_shape(imgsz), device=next(model.parameters()).device))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    head = getattr(model, "detect", None)
    fixed = {id(c) for c in head.m} if head is not None and hasattr(head, "m") else set()
    out = {}
    for n, (h, w, hw) in shapes.items():
        m = mods[n]
        parent = mods.get(n.rsplit(".", 1)[0]) if "." in n else None
        out[n] = ConvSpec(m.in_channels, m.out_channels, tuple(m.kernel_size), tuple(m.stride), tuple(m.padding),
                          m.groups, int(h), int(w), int(hw), _act_name(parent), id(m) in fixed)  # fmt: skip
    return out


def model_widths(model: nn.Module) -> dict[str, tuple[int, int]]:
    """(in, out) channels of every conv of a (pruned) model, to predict its latency."""
    return {n: (m.in_channels, m.out_channels) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def arch_hash(specs: Mapping[str, ConvSpec]) -> str:
    """A short hash of the layer geometry: the table describes this model's layers and no other's."""
    text = json.dumps({n: asdict(s) for n, s in sorted(specs.items())}, sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def table_key(specs: Mapping[str, ConvSpec], imgsz: int | Sequence[int], threads: int, round_to: int) -> dict:
    """What a timing depends on; a cached table is reused only when every entry matches."""
    cpu = cpu_info()
    return {
        "cpu": cpu["model"], "cpu_flags": list(cpu["flags"]), "onnxruntime": ort.__version__,
        "threads": int(threads), "imgsz": list(to_shape(imgsz)), "round_to": int(round_to),
        "arch": arch_hash(specs),
    }  # fmt: skip


def key_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Which key entries differ, as 'threads 1 -> 2' (empty when the table can be reused)."""
    return [f"{k} {old.get(k)} -> {new.get(k)}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


def width_grid(channels: int, round_to: int, fractions: Sequence[float] = FRACTIONS) -> list[int]:
    """Candidate channel counts: each fraction of `channels` rounded up to `round_to`, ascending, no repeats."""
    n = max(1, int(round_to))
    vals = {min(channels, max(1, -(-int(np.ceil(channels * f - 1e-9)) // n) * n)) for f in fractions}
    return sorted(vals | {channels})


# --------------------------------------------------------------------------------------------- timing one op


def conv_graph(spec: ConvSpec, cin: int, cout: int) -> onnx.ModelProto:
    """A one-conv ONNX graph at (cin, cout): conv with bias (BatchNorm folded), then the activation."""
    groups = cin if spec.depthwise else spec.groups
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((cout, cin // groups, *spec.k)).astype(np.float32) * 0.1
    inits = [helper.make_tensor("W", TensorProto.FLOAT, weight.shape, weight.ravel()),
             helper.make_tensor("B", TensorProto.FLOAT, [cout], np.zeros(cout, np.float32))]  # fmt: skip
    pads = [*spec.pad, *spec.pad]
    nodes = [helper.make_node("Conv", ["x", "W", "B"], ["c"], kernel_shape=list(spec.k), strides=list(spec.stride),
                              pads=pads, group=groups)]  # fmt: skip
    if spec.act == "silu":
        nodes += [helper.make_node("Sigmoid", ["c"], ["s"]), helper.make_node("Mul", ["c", "s"], ["y"])]
    elif spec.act == "relu":
        nodes.append(helper.make_node("Relu", ["c"], ["y"]))
    elif spec.act == "leaky":
        nodes.append(helper.make_node("LeakyRelu", ["c"], ["y"], alpha=0.1))
    else:
        nodes.append(helper.make_node("Identity", ["c"], ["y"]))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, spec.h, spec.w])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = helper.make_graph(nodes, "op", [x], [y], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def call_overhead_ms(threads: int, runs: int = 21) -> float:
    """What one session.run costs with no work (a 1-element Identity): a whole model pays it once, not per layer,
    so it is taken off every layer's time."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 1, 1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 1, 1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "nop", [x], [y])
    return time_graph(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), threads, runs)


def time_graph(proto: onnx.ModelProto, threads: int, runs: int = 7, min_ms: float = 20.0) -> float:
    """Median ms of one run of a one-input graph: at least `runs` runs and `min_ms` of timed work."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = int(threads), 1
    sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    x = {inp.name: np.random.default_rng(0).random(inp.shape, dtype=np.float32)}
    for _ in range(2):
        sess.run(None, x)
    times: list[float] = []
    while len(times) < runs or sum(times) < min_ms and len(times) < 200:
        t0 = time.perf_counter()
        sess.run(None, x)
        times.append((time.perf_counter() - t0) * 1e3)
    return float(statistics.median(times))


# --------------------------------------------------------------------------------------------- the table


@dataclass
class LayerTable:
    """One conv's times (ms) on a grid of input x output channel counts (both ascending)."""

    cin: list[int]
    cout: list[int]
    ms: list[list[float]]  # [len(cin)][len(cout)], made non-decreasing along both axes
    out_hw: int

    def predict(self, cin: int, cout: int) -> float:
        """Bilinear interpolation on the grid; below the smallest width, proportional to it."""
        grid = np.asarray(self.ms, dtype=np.float64)
        return _interp_1d(self.cout, cout, _interp_1d_rows(self.cin, cin, grid))


def _interp_1d_rows(xs: Sequence[int], x: float, grid: np.ndarray) -> np.ndarray:
    """Rows of `grid` (indexed by xs) interpolated at x; proportional below xs[0]."""
    xs_a = np.asarray(xs, dtype=np.float64)
    if x <= xs_a[0]:
        return grid[0] * (x / xs_a[0])
    if x >= xs_a[-1] or len(xs_a) == 1:
        return grid[-1]
    j = int(np.searchsorted(xs_a, x))
    t = (x - xs_a[j - 1]) / (xs_a[j] - xs_a[j - 1])
    return grid[j - 1] * (1 - t) + grid[j] * t


def _interp_1d(xs: Sequence[int], x: float, values: np.ndarray) -> float:
    return float(_interp_1d_rows(xs, x, np.asarray(values, dtype=np.float64)[:, None])[0])


@dataclass
class LatencyTable:
    """Per-conv time grids, their scale s and the rest `a + b * activation elements`, valid for `key` only."""

    key: dict
    layers: dict[str, LayerTable]
    rest_a: float = 0.0
    rest_b: float = 0.0
    measured: dict = field(default_factory=dict)  # whole-model timings the rest was fitted on
    seconds: float = 0.0
    conv_scale: float = 1.0  # s: the whole model's share of the conv sum timed one conv at a time
    level: float = 1.0  # this session's speed against the profiling session's (reanchor); never written

    def to_json(self, path: str | Path) -> Path:
        d = {"format": FORMAT, "key": self.key, "rest_a": self.rest_a, "rest_b": self.rest_b,
             "conv_scale": self.conv_scale, "measured": self.measured, "seconds": round(self.seconds, 1),
             "layers": {n: asdict(t) for n, t in self.layers.items()}}  # fmt: skip
        return atomic_write_text(path, json.dumps(d, indent=1) + "\n")

    @classmethod
    def from_json(cls, path: str | Path) -> LatencyTable:
        d = json.loads(Path(path).read_text())
        if d.get("format") != FORMAT:
            found = str(d.get("format", ""))
            older = found.startswith(FORMAT.rsplit("/", 1)[0])
            raise ValueError(f"{path}: an older latency table ({found}; this version reads {FORMAT})" if older
                             else f"{path}: not a latency table ({FORMAT})")
        layers = {n: LayerTable(**t) for n, t in d["layers"].items()}
        return cls(d["key"], layers, d["rest_a"], d["rest_b"], d.get("measured", {}), d.get("seconds", 0.0),
                   d["conv_scale"])


def _monotone(grid: np.ndarray) -> np.ndarray:
    """More channels never predict less time: timing noise would otherwise make the budget search oscillate."""
    return np.maximum.accumulate(np.maximum.accumulate(grid, axis=0), axis=1)


def _layer_points(spec: ConvSpec, round_to: int) -> tuple[list[int], list[int]]:
    cins = [spec.cin] if spec.cin <= 4 else width_grid(spec.cin, round_to)  # the image's 3 channels stay
    couts = [spec.cout] if spec.fixed_out else width_grid(spec.cout, round_to)
    return (cins, cins) if spec.depthwise else (cins, couts)


def profile_layers(
    specs: Mapping[str, ConvSpec], threads: int, round_to: int, runs: int = 7,
    log: Callable[[str], None] | None = None,
) -> dict[str, LayerTable]:
    """Time every conv at its grid of widths (less the empty call's overhead); identical geometries are timed once."""
    seen: dict[tuple, float] = {}
    overhead = call_overhead_ms(threads)
    out = {}
    for i, (name, spec) in enumerate(specs.items()):
        cins, couts = _layer_points(spec, round_to)
        grid = np.zeros((len(cins), len(couts)))
        for a, ci in enumerate(cins):
            for b, co in enumerate(couts):
                if spec.depthwise and a != b:
                    continue
                geo = (ci, co, spec.k, spec.stride, spec.pad, spec.groups > 1, spec.depthwise, spec.h, spec.w, spec.act)
                if geo not in seen:
                    seen[geo] = max(time_graph(conv_graph(spec, ci, co), threads, runs) - overhead, 0.0)
                grid[a, b] = seen[geo]
        if spec.depthwise:  # only cin == cout exists: fill the grid so interpolation near the diagonal holds
            diag = np.diag(grid).copy()
            grid = diag[np.maximum.outer(np.arange(len(cins)), np.arange(len(couts)))]
        out[name] = LayerTable(cins, couts, _monotone(grid).round(5).tolist(), spec.out_hw)
        if log is not None and (i + 1) % 10 == 0:
            log(f"  profiled {i + 1}/{len(specs)} layers ({len(seen)} distinct ops)")
    return out


class TablePredictor:
    """A model's latency from its conv widths, by the table: what the plan's latency search calls."""

    def __init__(self, table: LatencyTable):
        self.table = table

    def _full(self, name: str) -> tuple[int, int]:
        t = self.table.layers[name]
        return t.cin[-1], t.cout[-1]

    def layer_ms(self, widths: Widths) -> dict[str, float]:
        """Predicted ms of each conv (a conv `widths` does not name runs at its profiled full width)."""
        out = {}
        for name, t in self.table.layers.items():
            cin, cout = widths.get(name, self._full(name))
            out[name] = t.predict(cin, cout)
        return out

    def activations(self, widths: Widths) -> float:
        return float(sum(widths.get(n, self._full(n))[1] * t.out_hw for n, t in self.table.layers.items()))

    def total_ms(self, widths: Widths) -> float:
        """The scaled sum of the convs plus the fitted rest (never below zero: s, a, b >= 0)."""
        t = self.table
        fitted = t.conv_scale * sum(self.layer_ms(widths).values()) + t.rest_a + t.rest_b * self.activations(widths)
        return t.level * fitted

    __call__ = total_ms


def fit_rest(table: LatencyTable, samples: Sequence[tuple[Widths, float]]) -> None:
    """Fit `measured = s * convs + a + b * activations` to whole-model timings (widths, measured ms), in place.

    All three stay >= 0, so no width configuration is ever predicted to take no time (a negative rest once let a
    0.0001 ms budget pass as reachable). One timing fixes one unknown: the rest a when the conv sum undercounts the
    model, the scale s when it overcounts (at 640 px the one-conv-at-a-time sum exceeds the whole model). More
    timings: the non-negative least-squares fit with the smallest error over the subsets of {s, a, b}."""
    pred = TablePredictor(LatencyTable(table.key, table.layers))
    conv = np.array([sum(pred.layer_ms(w).values()) for w, _ in samples])
    vol = np.array([pred.activations(w) for w, _ in samples])
    y = np.array([m for _, m in samples], dtype=np.float64)
    if len(samples) == 1 or np.ptp(conv) <= 0:
        s, a, b = (1.0, float(np.mean(y - conv)), 0.0) if np.mean(y) >= np.mean(conv) else \
            (float(np.mean(y) / np.mean(conv)), 0.0, 0.0)
    else:
        s, a, b = _nonnegative_fit(np.stack([conv, np.ones_like(conv), vol], axis=1), y)
    table.conv_scale, table.rest_a, table.rest_b = s, a, b


def _nonnegative_fit(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """Least squares of y on the columns of x with every coefficient >= 0: the best of the fits on each subset of
    columns whose coefficients all come out >= 0 (three columns: seven subsets, no solver needed)."""
    best, coef = np.inf, np.zeros(x.shape[1])
    for mask in range(1, 2 ** x.shape[1]):
        cols = [j for j in range(x.shape[1]) if mask >> j & 1]
        c, *_ = np.linalg.lstsq(x[:, cols], y, rcond=None)
        if (c < 0).any():
            continue
        err = float(np.sum((x[:, cols] @ c - y) ** 2))
        if err < best - 1e-12:
            best, coef = err, np.zeros(x.shape[1])
            coef[cols] = c
    return float(coef[0]), float(coef[1]), float(coef[2])


def measure_models(
    models: Mapping[str, nn.Module], imgsz: int | Sequence[int], threads: int, runs: int = 30, warmup: int = 3,
    sessions: int = SESSIONS,
) -> dict[str, float]:
    """Median ms of each model exported to ONNX and run in ONNX Runtime, timed interleaved (reports.latency).

    Each model runs in `sessions` ONNX Runtime sessions, every one timed in each of the `runs` rounds, and its
    figure is the mean of their medians: one session keeps its own memory layout for its life, and on this
    machine the same file in several sessions, timed side by side, differed by a few %: a spread that a budget
    of 5% cannot afford to draw once."""
    if sessions < 1:
        raise ValueError(f"sessions {sessions} must be >= 1")
    with tempfile.TemporaryDirectory(prefix="yolov5-slim-lat-") as tmp:
        runners = {}
        for i, (name, m) in enumerate(models.items()):
            path = export_onnx(m, Path(tmp) / f"m{i}.onnx", imgsz=imgsz)
            for k in range(sessions):
                runners[(name, k)] = OnnxRunner(path, threads=threads, imgsz=imgsz)
        res = benchmark(runners, runs=runs, warmup=warmup)
    return {n: statistics.fmean(res[(n, k)]["median_ms"] for k in range(sessions)) for n in models}


def profile_model(
    model: nn.Module, imgsz: int | Sequence[int], threads: int, round_to: int = 8,
    calibration: Mapping[str, nn.Module] | None = None, runs: int = 7, model_runs: int = 30,
    log: Callable[[str], None] | None = None,
) -> LatencyTable:
    """Build the table: every conv timed at its grid of widths, then the rest fitted on whole-model timings of
    `model` and of the `calibration` models (e.g. the narrowest model the plan can reach) timed interleaved."""
    t0 = time.time()
    specs = conv_specs(model, imgsz)
    layers = profile_layers(specs, threads, round_to, runs, log)
    table = LatencyTable(table_key(specs, imgsz, threads, round_to), layers)
    models = {"full": model, **dict(calibration or {})}
    measured = measure_models(models, imgsz, threads, runs=model_runs)
    fit_rest(table, [(model_widths(models[n]), ms) for n, ms in measured.items()])
    table.measured = {n: round(ms, 4) for n, ms in measured.items()}
    table.seconds = time.time() - t0
    return table


def default_table_path(model: nn.Module, imgsz: int | Sequence[int]) -> Path:
    """~/.cache/yolov5-slim/latency/<arch hash>.json: one file per model geometry, rebuilt when its key changes."""
    return CACHE_DIR / f"{arch_hash(conv_specs(model, imgsz))}.json"


def load_or_profile(
    model: nn.Module, imgsz: int | Sequence[int], threads: int, round_to: int = 8, path: str | Path | None = None,
    calibration: Callable[[], Mapping[str, nn.Module]] | None = None, log: Callable[[str], None] = print,
    **kw: Any,
) -> tuple[LatencyTable, Path]:
    """The table at `path` (default: the cache) when its key matches this machine and these settings; otherwise
    profiled again and written there. `calibration` builds the extra models only when a profile is needed or a
    reused table is re-anchored on this session's speed (`reanchor`)."""
    path = Path(path) if path is not None else default_table_path(model, imgsz)
    key = table_key(conv_specs(model, imgsz), imgsz, threads, round_to)
    if path.is_file():
        try:
            old = LatencyTable.from_json(path)
        except json.JSONDecodeError as e:
            log(f"latency table {path}: unreadable ({e}); profiling again")
        except ValueError as e:  # an older format or not a table: the message names the file
            log(f"latency table {e}; profiling again")
        except (KeyError, TypeError) as e:
            log(f"latency table {path}: unreadable ({e!r}); profiling again")
        else:
            changes = key_changes(old.key, key)
            if not changes:
                extra = calibration is not None and any(n != "full" for n in old.measured)
                models = {"full": model, **dict(calibration() if extra else {})}
                log(f"latency table {path}: key matches, reused" + reanchor(old, models, imgsz, threads,
                                                                             kw.get("model_runs", 30)))
                return old, path
            log(f"latency table {path}: key changed ({'; '.join(changes)}); profiling again")
    else:
        log(f"latency table {path}: none yet; profiling {threads} thread(s) at {list(to_shape(imgsz))}")
    table = profile_model(model, imgsz, threads, round_to, calibration() if calibration else None, log=log, **kw)
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_json(path)
    return table, path


def reanchor(
    table: LatencyTable, models: Mapping[str, nn.Module], imgsz: int | Sequence[int], threads: int, runs: int = 30
) -> str:
    """Scale a reused table to this session's speed: the models it was fitted on timed now against then.

    Same CPU model, same key, yet a virtual machine runs a few % faster or slower from one day (or hour) to the
    next: other tenants, turbo, which physical host. The table's shape (what each layer costs against the others)
    holds; its level does not, and a budget in ms is a level. So a reused table times again, interleaved as when
    it was profiled, the whole models whose timings it stored (the full model and the calibration cuts: seconds)
    and multiplies every prediction by the sum now / the sum then (`table.level`). Returns the log's tail; a table
    without stored timings is used as it is."""
    names = [n for n in models if table.measured.get(n)]
    if not names:
        return " (no stored whole-model timings: not re-anchored)"
    now = measure_models({n: models[n] for n in names}, imgsz, threads, runs=runs)
    then = {n: float(table.measured[n]) for n in names}
    table.level = sum(now.values()) / sum(then.values())
    note = (f"; its {len(names)} fitted model(s) run in {sum(now.values()):.3g} ms now, {sum(then.values()):.3g} ms "
            f"when profiled: predictions x{table.level:.3f}")
    if not 0.8 <= table.level <= 1.25:
        note += " (a large change: is another job running beside this one?)"
    return note


def check_prediction(
    table: LatencyTable, models: Mapping[str, nn.Module], imgsz: int | Sequence[int], threads: int, runs: int = 30
) -> dict[str, dict[str, float]]:
    """Predicted vs measured (interleaved median) ms of each model, with the error in percent.

    With a model named "full" among them, each other model also gets the prediction anchored on it
    (`anchored_ms`: the table's ratio of the model to the full one, times the full model's median measured in
    the same rounds) and its error. That is the figure to judge the table by on a shared machine: its speed
    wanders by several % within minutes, which moves every absolute timing alike and leaves ratios measured side
    by side alone (docs/results.md, the latency model)."""
    pred = TablePredictor(table)
    measured = measure_models(models, imgsz, threads, runs=runs)
    out = {}
    for n, m in models.items():
        p = pred.total_ms(model_widths(m))
        out[n] = {"predicted_ms": p, "measured_ms": measured[n], "error_pct": 100.0 * (p - measured[n]) / measured[n]}
    full = out.get("full")
    for n, r in out.items():
        if full is not None and n != "full":
            r["anchored_ms"] = r["predicted_ms"] * full["measured_ms"] / full["predicted_ms"]
            r["anchored_error_pct"] = 100.0 * (r["anchored_ms"] - r["measured_ms"]) / r["measured_ms"]
    return out
