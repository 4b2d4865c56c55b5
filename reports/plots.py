"""PNG plots of a run: BN |gamma| histogram, channels per layer, ratio sweep, latency bars, per-class AP.

Every function takes plain data (or modules), writes one PNG and returns its path, or None when there is
nothing to plot. matplotlib runs headless (Agg); nothing is shown.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

from reports.detect import load_predictor, side_by_side

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from torch import nn  # noqa: E402

from yolo.modules import bn_gammas  # noqa: E402

COLOURS = ["#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860"]


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def conv_channels(model: nn.Module) -> dict[str, int]:
    """Output channels of every Conv2d, by module name, in network order."""
    return {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def gamma_histogram(models: Mapping[str, nn.Module], path: Path, threshold: float | None = None) -> Path | None:
    data = {k: bn_gammas(m).abs().numpy() for k, m in models.items()}
    data = {k: v for k, v in data.items() if v.size}
    if not data:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    hi = max(float(np.percentile(v, 99.5)) for v in data.values())
    bins = np.linspace(0, max(hi, 1e-3), 60)
    for i, (k, v) in enumerate(data.items()):
        colour = COLOURS[i % len(COLOURS)]
        ax.hist(np.clip(v, 0, bins[-1]), bins=bins, alpha=0.55, color=colour, label=f"{k} ({v.size})")
    if threshold is not None:
        ax.axvline(threshold, color="k", ls="--", lw=1, label=f"threshold {threshold:.3g}")
    ax.set_xlabel("BatchNorm |gamma|")
    ax.set_ylabel("channels")
    ax.set_title("BatchNorm scale factors")
    ax.legend()
    return _save(fig, path)


def channels_per_layer(before: nn.Module, after: nn.Module, path: Path) -> Path | None:
    a, b = conv_channels(before), conv_channels(after)
    names = [n for n in a if n in b]
    if not names:
        return None
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(8, len(names) * 0.16), 4))
    ax.bar(x, [a[n] for n in names], color="#cccccc", label="before")
    ax.bar(x, [b[n] for n in names], color=COLOURS[0], label="after")
    kept = sum(b[n] for n in names) / max(1, sum(a[n] for n in names))
    ax.set_title(f"output channels per convolution (kept {kept:.0%})")
    ax.set_xlabel("convolution (network order)")
    ax.set_ylabel("channels")
    step = max(1, len(names) // 20)
    ax.set_xticks(x[::step])
    ax.set_xticklabels([n.replace("model.", "").replace(".conv", "") for n in names][::step], rotation=90, fontsize=6)
    ax.legend()
    return _save(fig, path)


def sweep_curve(sweep: Sequence[Mapping[str, Any]], path: Path) -> Path | None:
    """mAP against prune ratio (and GFLOPs on a second axis) from rows {ratio, map, map50?, gflops?}."""
    rows = sorted((r for r in sweep if r.get("ratio") is not None), key=lambda r: r["ratio"])
    if not rows:
        return None
    x = [r["ratio"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, label, c in (("map", "mAP50-95", COLOURS[0]), ("map50", "mAP50", COLOURS[1])):
        ys = [r.get(key) for r in rows]
        if any(y is not None for y in ys):
            ax.plot(x, [np.nan if y is None else y for y in ys], "o-", color=c, label=label)
    ax.set_xlabel("prune ratio")
    ax.set_ylabel("mAP")
    ax.grid(alpha=0.3)
    if any(r.get("gflops") is not None for r in rows):
        ax2 = ax.twinx()
        ax2.plot(x, [r.get("gflops", np.nan) for r in rows], "s--", color="#555555", label="GFLOPs")
        ax2.set_ylabel("GFLOPs")
        ax2.legend(loc="upper right")
    ax.legend(loc="lower left")
    ax.set_title("ratio sweep")
    return _save(fig, path)


def latency_bars(latencies: Mapping[str, Mapping[str, Mapping[str, float]]], path: Path) -> Path | None:
    """Grouped bars: model -> {setting ('onnxruntime 1 thread', ...) -> {median_ms, p90_ms}}."""
    models = [m for m, v in latencies.items() if v]
    settings = sorted({s for m in models for s in latencies[m]})
    if not models or not settings:
        return None
    fig, ax = plt.subplots(figsize=(max(6, len(models) * len(settings) * 0.6 + 2), 4))
    width = 0.8 / len(settings)
    x = np.arange(len(models))
    for i, s in enumerate(settings):
        med = [latencies[m].get(s, {}).get("median_ms", np.nan) for m in models]
        p90 = [latencies[m].get(s, {}).get("p90_ms", np.nan) for m in models]
        err = np.clip(np.asarray(p90, dtype=float) - np.asarray(med, dtype=float), 0, None)
        bars = ax.bar(
            x + i * width,
            med,
            width,
            yerr=[np.zeros_like(err), err],
            capsize=3,
            label=s,
            color=COLOURS[i % len(COLOURS)],
        )
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks(x + width * (len(settings) - 1) / 2)
    ax.set_xticklabels(models)
    ax.set_ylabel("ms per image (median, whisker p90)")
    ax.set_title("latency")
    ax.legend(fontsize=8)
    return _save(fig, path)


def pareto_map(points: Sequence[Mapping[str, Any]], path: Path, title: str = "mAP50 against latency",
               yardstick: str | None = None) -> Path | None:
    """mAP50 against latency, one labelled point per model, the Pareto front (no model both faster and more
    accurate) drawn as a step line. points: {name, latency_ms, map50, front (bool)}."""
    pts = [p for p in points if p.get("latency_ms") is not None and p.get("map50") is not None]
    if not pts:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for p in pts:
        base = p["name"] == yardstick
        ax.scatter(p["latency_ms"], p["map50"], s=60 if base else 36, marker="*" if base else "o",
                   color=COLOURS[3] if base else (COLOURS[0] if p.get("front") else "#999999"), zorder=3)
    ax.margins(x=0.08, y=0.08)
    ax.autoscale_view()
    xy = ax.transData.transform([(p["latency_ms"], p["map50"]) for p in pts]) * 72.0 / fig.dpi  # in points
    frame = tuple(np.concatenate(ax.transData.transform([(ax.get_xlim()[0], ax.get_ylim()[0]),
                                                         (ax.get_xlim()[1], ax.get_ylim()[1])])) * 72.0 / fig.dpi)
    for p, offset in zip(pts, label_offsets(xy, [p["name"] for p in pts], frame=frame)):
        ax.annotate(p["name"], (p["latency_ms"], p["map50"]), textcoords="offset points", xytext=offset, fontsize=7)
    front = sorted((p for p in pts if p.get("front")), key=lambda p: p["latency_ms"])
    if len(front) > 1:
        ax.step([p["latency_ms"] for p in front], [p["map50"] for p in front], where="post", color=COLOURS[0],
                alpha=0.6, label="Pareto front")
        ax.legend(fontsize=8, loc="lower right")
    ax.set_xlabel("latency, ms per image (ONNX Runtime, 1 thread, median)")
    ax.set_ylabel("mAP50")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def label_offsets(xy: np.ndarray, names: Sequence[str], size: float = 7.0,
                  frame: tuple[float, float, float, float] | None = None) -> list[tuple[float, float]]:
    """An offset (points) for each point's label, chosen greedily so that no label covers another label or a
    point, or leaves `frame` (the axes, x0, y0, x1, y1 in points): right-above, right-below, left-above,
    left-below, then further up or down; the first free one, else the least covered. `xy` are the points'
    positions in points; a label is about 0.55 em per character wide."""
    pad, h = 4.0, size + 2.0
    boxes: list[tuple[float, float, float, float]] = []
    dots = [(x - 3, y - 3, x + 3, y + 3) for x, y in xy]

    def covered(b) -> float:
        out = 0.0 if frame is None else (b[2] - b[0]) * (b[3] - b[1]) - _overlap(b, frame)
        return out + sum(_overlap(b, o) for o in boxes + dots)

    out = []
    for i in sorted(range(len(names)), key=lambda i: -xy[i][1]):  # top to bottom: the dense front reads downwards
        w = 0.55 * size * len(names[i])
        x, y = xy[i]
        cands = [(pad, pad), (pad, -h - 1), (-pad - w, pad), (-pad - w, -h - 1), (pad, pad + h), (pad, -2 * h - 1),
                 (-pad - w, pad + h), (-pad - w, -2 * h - 1)]
        cover = [covered((x + dx, y + dy, x + dx + w, y + dy + h)) for dx, dy in cands]
        best = cands[min(range(len(cands)), key=lambda k: (cover[k] > 0, cover[k], k))]
        boxes.append((x + best[0], y + best[1], x + best[0] + w, y + best[1] + h))
        out.append((i, best))
    return [c for _, c in sorted(out)]


def _overlap(a, b) -> float:
    return max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))


def per_class_ap(
    per_class: Mapping[str, Sequence[Mapping[str, Any]]], path: Path, key: str = "ap", top: int = 80
) -> Path | None:
    """Horizontal bars of per-class AP for each model (classes the first model scores, at most `top`)."""
    models = [m for m, rows in per_class.items() if rows]
    if not models:
        return None
    tables = {m: {r["name"]: r.get(key) for r in per_class[m]} for m in models}
    first = per_class[models[0]]
    names = [r["name"] for r in first if r.get(key) is not None][:top]
    if not names:
        return None
    y = np.arange(len(names))
    h = 0.8 / len(models)
    fig, ax = plt.subplots(figsize=(7, max(3, len(names) * 0.22 + 1)))
    for i, m in enumerate(models):
        vals = [tables[m].get(n) for n in names]
        ax.barh(y + i * h, [np.nan if v is None else v for v in vals], h, label=m, color=COLOURS[i % len(COLOURS)])
    ax.set_yticks(y + h * (len(models) - 1) / 2)
    ax.set_yticklabels(names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("AP50-95" if key == "ap" else key)
    ax.set_title("per-class AP")
    ax.legend(fontsize=8)
    return _save(fig, path)


# ------------------------------------------------------------------------------------------- a report's plots


def report_plots(run_dir: Path, entries: Sequence[Any], extras: Mapping[str, Any], base: Any) -> list[Path]:
    """Every plot a report has data for, written into run_dir. `entries` are reports.report.ModelEntry objects
    and `base` the one the others are compared with."""
    out: list[Path | None] = []
    with_models = {e.role: e.model for e in entries if e.model is not None}
    gamma_models = dict(extras.get("gamma_models") or {k: m for k, m in with_models.items() if k != "int8"})
    if gamma_models:
        out.append(gamma_histogram(gamma_models, run_dir / "gamma_hist.png", extras.get("gamma_threshold")))
    pruned = next((e for e in entries if e.role != (base.role if base else None) and e.model is not None), None)
    if base is not None and base.model is not None and pruned is not None:
        out.append(channels_per_layer(base.model, pruned.model, run_dir / "channels_per_layer.png"))
    if extras.get("sweep"):
        out.append(sweep_curve(extras["sweep"], run_dir / "ratio_sweep.png"))
    lat = {e.role: e.latency for e in entries if e.latency}
    if lat:
        out.append(latency_bars(lat, run_dir / "latency.png"))
    pcs = {e.role: e.metrics.get("per_class") for e in entries if e.metrics.get("per_class")}
    if pcs:
        out.append(per_class_ap(pcs, run_dir / "per_class_ap.png"))
    images = list(extras.get("images") or [])
    if images:
        out += detection_panels(run_dir, entries, images, extras)
    return [p for p in out if p is not None]


def detection_panels(run_dir: Path, entries: Sequence[Any], images: Sequence[Any], extras) -> list[Path]:
    """Baseline vs the other models' detections side by side on a few images."""

    preds = []
    for e in entries:
        src = e.model if e.model is not None else (e.onnx_path or e.path)
        if src is not None:
            preds.append((e.role, load_predictor(src)))
    if not preds:
        return []
    out = []
    imgsz = extras.get("imgsz", 640)
    for i, img in enumerate(images[: int(extras.get("max_images", 4))]):
        p = run_dir / f"detections_{i}.png"
        side_by_side(preds, img, imgsz=imgsz, conf_thres=float(extras.get("conf_thres", 0.25))).save(p)
        out.append(p)
    return out
