"""What to prune and how: one validated settings object shared by the library and the command line."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

IMPORTANCES = ("slim", "l1", "l2", "taylor")
COMPENSATIONS = ("beta", "mean", "none")

# Why these defaults:
# - min_keep 0.1: a layer keeps at least 10% of its channels (and at least one), so no layer disappears.
# - round_to 8: kept channels per group are a multiple of 8 (the granularity of SIMD/tensor-core kernels and of
#   the official YOLOv5 widths). bench/prune_speed.py --round-to-latency measured yolov5n pruned to half its FLOPs
#   in ONNX Runtime (1 thread): round_to 1: 50.9 ms, 4: 44.2, 8: 43.8, 16: 41.3 ms, same GFLOPs. 8 gets most of the
#   gain while still letting the 16/32-channel layers of small models be pruned.
# - warn_gamma 0.05: after BN-L1 sparse training the gammas of the channels worth removing sit near 1e-3..1e-2,
#   while an ordinarily trained YOLOv5 has median |gamma| around 1; removing anything above 0.05 loses a visible
#   share of a layer's signal, which only fine-tuning can win back.
DEFAULT_MIN_KEEP = 0.1
DEFAULT_ROUND_TO = 8
DEFAULT_WARN_GAMMA = 0.05
EXACTLY_ONE = ("give exactly one of ratio (fraction of channels REMOVED), target_flops or target_params "
               "(fraction KEPT), target_latency (ms) or target_speedup (x)")
LATENCY_AMOUNTS = ("target_latency", "target_speedup")
CALIB_NEEDED = ("importance 'taylor', compensate='mean', recalibrate and reconstruct need calibration images "
                "(--data / calib_loader)")


class PruneError(ValueError):
    """A pruning request that cannot be carried out; the message is one line saying why."""


_FIELD = re.compile(r"\b(ratio|target_flops|target_params|target_latency|target_speedup|importance|min_keep|round_to|"
                    r"compensate|recalibrate|"
                    r"reconstruct|calib_images|imgsz)\b")


@dataclass
class PruneConfig:
    """Pruning settings.

    Amount, exactly one of:
      ratio          fraction of the prunable channels REMOVED (0 <= ratio < 1)
      target_flops   fraction of the model's FLOPs KEPT (0 < x <= 1), reached by bisection on the threshold
      target_params  fraction of the model's parameters KEPT (0 < x <= 1)
      target_latency the measured ONNX Runtime median to reach, in ms (> 0); needs a latency predictor and a
                     timer from the caller (prune/latency.py)
      target_speedup the baseline's measured median divided by this (> 1) is the latency budget
    importance     'slim' (BatchNorm |gamma|, one global threshold), 'l1' / 'l2' (mean |w| / RMS of the filters),
                   'taylor' (the detection loss's first-order change on calibration images; prune/importance.py)
    min_keep       per-layer floor: a fraction (< 1) of the layer's channels, or (>= 1) a channel count; >= 1 always
    round_to       kept channels of a group are rounded UP to a multiple of this (never above the original)
    ignore         glob patterns on module names ('model.0.*', 'model.24.*'): those layers keep every channel
    compensate     'beta' (fold act(beta) of removed channels into their consumers), 'mean' (fold their mean
                   input on calibration images), 'none'
    recalibrate    re-estimate BatchNorm statistics over this many training images after slicing (0 = off)
    reconstruct    re-fit the convs that lost inputs by least squares to the unpruned outputs on this many training
                   images (0 = off; prune/reconstruct.py): for checkpoints that were not sparse-trained
    calib_images   images used to measure channel means for compensate='mean' and the taylor importance
    warn_gamma     warn when a removed channel's |gamma| exceeds this
    imgsz          image size for the FLOPs accounting
    """

    ratio: float | None = None
    target_flops: float | None = None
    target_params: float | None = None
    target_latency: float | None = None
    target_speedup: float | None = None
    importance: str = "slim"
    min_keep: float = DEFAULT_MIN_KEEP
    round_to: int = DEFAULT_ROUND_TO
    ignore: tuple[str, ...] = field(default_factory=tuple)
    compensate: str = "beta"
    recalibrate: int = 0
    reconstruct: int = 0
    calib_images: int = 64
    warn_gamma: float = DEFAULT_WARN_GAMMA
    imgsz: int = 640

    def __post_init__(self) -> None:
        """Every setting is checked here, once, whoever builds the config; the amount may be left out (a sweep
        supplies its own), but not given twice."""
        self.ignore = (self.ignore,) if isinstance(self.ignore, str) else tuple(self.ignore)
        amounts = [k for k, v in self.amount_items() if v is not None]
        if len(amounts) > 1:
            raise PruneError(f"{EXACTLY_ONE}; got {', '.join(amounts)}")
        if self.ratio is not None and not 0.0 <= self.ratio < 1.0:
            raise PruneError(f"ratio {self.ratio} is outside [0, 1): it is the fraction of channels REMOVED")
        for name in ("target_flops", "target_params"):
            v = getattr(self, name)
            if v is not None and not 0.0 < v <= 1.0:
                raise PruneError(f"{name} {v} is outside (0, 1]: it is the fraction KEPT")
        if self.target_latency is not None and not self.target_latency > 0:
            raise PruneError(f"target_latency {self.target_latency} must be > 0 (milliseconds)")
        if self.target_speedup is not None and not self.target_speedup > 1:
            raise PruneError(f"target_speedup {self.target_speedup} must be > 1 (baseline latency / pruned latency)")
        self._check_choices()

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> PruneConfig:
        """A config from a mapping (a saved config, a caller's settings); an unknown key is one line, not a
        TypeError."""
        cls._refuse_unknown(values)
        return cls(**values)

    @classmethod
    def from_flags(cls, **values: Any) -> PruneConfig:
        """from_dict for a command line: a bad value's error names the flag (--target-flops), not the field."""
        cls._refuse_unknown(values)
        try:
            return cls(**values)
        except PruneError as e:
            raise PruneError(cls.flag_names(str(e))) from None

    @staticmethod
    def flag_names(message: str) -> str:
        """A library message with its setting names written as the command line's flags (--target-latency)."""
        return _FIELD.sub(lambda m: "--" + m.group(1).replace("_", "-"), message)

    @classmethod
    def _refuse_unknown(cls, values: Mapping[str, Any]) -> None:
        known = [f.name for f in fields(cls)]
        unknown = [k for k in values if k not in known]
        if unknown:
            raise PruneError(f"unknown prune setting {unknown[0]!r}; known: {', '.join(known)}")

    def validate(self) -> PruneConfig:
        """Check again after fields were changed in place (construction checks them already) and require an
        amount; returns self."""
        self.__post_init__()
        _ = self.amount
        return self

    @property
    def amount(self) -> tuple[str, float]:
        """(field, value) of the one amount given: what planning needs and a sweep replaces."""
        given = [(k, v) for k, v in self.amount_items() if v is not None]
        if not given:
            raise PruneError(f"{EXACTLY_ONE}; got none")
        return given[0]

    def _check_choices(self) -> None:
        if self.importance not in IMPORTANCES:
            raise PruneError(f"importance {self.importance!r} unknown; use one of {', '.join(IMPORTANCES)}")
        if self.compensate not in COMPENSATIONS:
            raise PruneError(f"compensate {self.compensate!r} unknown; use one of {', '.join(COMPENSATIONS)}")
        if self.min_keep < 0:
            raise PruneError(f"min_keep {self.min_keep} is negative")
        if int(self.round_to) != self.round_to or self.round_to < 1:
            raise PruneError(f"round_to {self.round_to} must be a positive integer")
        if self.recalibrate < 0 or self.reconstruct < 0 or self.calib_images < 1:
            raise PruneError("recalibrate and reconstruct must be >= 0 and calib_images >= 1")
        if self.imgsz < 32:
            raise PruneError(f"imgsz {self.imgsz} is too small")

    @property
    def needs_images(self) -> bool:
        """Whether applying this config reads calibration images (mean compensation, reconstruction, BN stats)."""
        return self.compensate == "mean" or self.recalibrate > 0 or self.reconstruct > 0 or self.importance == "taylor"

    @property
    def images_needed(self) -> int:
        """How many calibration images the most demanding of those steps reads."""
        return max(self.calib_images, self.recalibrate, self.reconstruct)

    def amount_items(self) -> list[tuple[str, float | None]]:
        return [("ratio", self.ratio), ("target_flops", self.target_flops), ("target_params", self.target_params),
                ("target_latency", self.target_latency), ("target_speedup", self.target_speedup)]

    @property
    def wants_latency(self) -> bool:
        """Whether the amount is a latency budget (the plan then needs a predictor, the cut a timer)."""
        return self.target_latency is not None or self.target_speedup is not None

    def floor(self, channels: int) -> int:
        """Fewest channels a layer of `channels` may keep."""
        if self.min_keep >= 1:
            return int(min(channels, max(1, int(self.min_keep))))
        return int(min(channels, max(1, math.ceil(channels * self.min_keep - 1e-9))))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ignore"] = list(self.ignore)
        return d
