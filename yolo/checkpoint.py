"""Reading official YOLOv5 checkpoints safely, and reading/writing this project's own format.

Official `.pt` files are pickles of whole `models.yolo.Model` objects. They are unpickled through an
allow-list: YOLOv5 class names become inert stand-ins (plain nn.Modules that run nothing), torch.nn layers and
torch/numpy/collections reconstruction functions are accepted, anything else stops the load before it runs.
Our own files hold only plain types and tensors (an architecture description + state_dict + metadata) and
load with `weights_only=True`.
"""

from __future__ import annotations

import collections
import datetime as _dt
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from yolo.convention import DEFAULT as DEFAULT_CONVENTION
from yolo.convention import from_meta
from yolo.fastestv2_weights import AuthorsWeightsError, authors_kind, from_authors_detector, load_backbone
from yolo.fileio import atomic_torch_save, atomic_write_text, file_sha256, plain  # noqa: F401  (re-exported)
from yolo.model import DetectionModel, ModelConfigError, de_parallel, module_shapes

FORMAT = "yolov5-slim/1"


class CheckpointError(ValueError):
    """A weights file that cannot be used; the message names the file and the reason."""


class UnsafeCheckpointError(CheckpointError):
    """The pickle asked for something outside the allow-list; nothing from it was run."""


# ---------------------------------------------------------------- safe unpickling of official files

_YOLO_MODULE_PREFIXES = ("models.", "yolov5.models.", "utils.", "yolov5.utils.")
_REFUSED_HEADS = {
    "SegmentationModel": "a segmentation model",
    "Segment": "a segmentation model",
    "ClassificationModel": "a classification model",
    "Classify": "a classification model",
}


class StandIn(nn.Module):
    """An inert placeholder for a YOLOv5 class: holds the pickled attributes, runs nothing."""

    yolo_class = "?"

    def forward(self, *args, **kwargs):  # pragma: no cover - never called
        raise RuntimeError(f"stand-in for YOLOv5 {self.yolo_class} cannot run")


_STANDINS: dict[str, type[StandIn]] = {}


def _standin(name: str) -> type[StandIn]:
    if name not in _STANDINS:
        _STANDINS[name] = type(name, (StandIn,), {"yolo_class": name})
    return _STANDINS[name]


def _allowed_globals() -> dict[tuple[str, str], Any]:
    allowed: dict[tuple[str, str], Any] = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("collections", "defaultdict"): collections.defaultdict,
        ("builtins", "set"): set,
        ("__builtin__", "set"): set,
        ("builtins", "frozenset"): frozenset,
        ("builtins", "slice"): slice,
        ("builtins", "object"): object,
        ("__builtin__", "object"): object,
        ("copyreg", "_reconstructor"): __import__("copyreg")._reconstructor,
        ("torch._utils", "_rebuild_tensor"): torch._utils._rebuild_tensor,
        ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
        ("torch", "Size"): torch.Size,
        ("torch", "device"): torch.device,
        ("argparse", "Namespace"): _standin("Namespace"),
        ("pathlib", "PosixPath"): _path_as_str,
        ("pathlib", "WindowsPath"): _path_as_str,
        ("pathlib", "Path"): _path_as_str,
    }
    for fn in ("_rebuild_parameter_with_state", "_rebuild_device_tensor_from_numpy", "_rebuild_qtensor"):
        if hasattr(torch._utils, fn):
            allowed[("torch._utils", fn)] = getattr(torch._utils, fn)
    for dt in ("float16", "float32", "float64", "bfloat16", "int64", "int32", "uint8", "int8", "bool"):
        allowed[("torch", dt)] = getattr(torch, dt)
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(mod, "_reconstruct")] = np.core.multiarray._reconstruct
        allowed[(mod, "scalar")] = np.core.multiarray.scalar
    allowed[("numpy", "ndarray")] = np.ndarray
    allowed[("numpy", "dtype")] = np.dtype
    for name in ("Float64DType", "Float32DType", "Int64DType", "Int32DType", "BoolDType"):
        if hasattr(np.dtypes, name):
            allowed[("numpy.dtypes", name)] = getattr(np.dtypes, name)
    return allowed


def _path_as_str(*parts: str) -> str:
    return str(Path(*parts)) if parts else ""


def _torch_nn_class(module: str, name: str) -> type | None:
    """A torch.nn module class (Conv2d, SiLU, Upsample, ...): safe to reconstruct, runs no code on load."""
    if not module.startswith("torch.nn.modules."):
        return None
    obj = getattr(nn, name, None)
    if isinstance(obj, type) and issubclass(obj, nn.Module) and obj.__module__ == module:
        return obj
    return None


class _SafeUnpickler(pickle.Unpickler):
    allowed = _allowed_globals()
    source = "checkpoint"

    def find_class(self, module: str, name: str):
        key = (module, name)
        if key in self.allowed:
            return self.allowed[key]
        nn_cls = _torch_nn_class(module, name)
        if nn_cls is not None:
            return nn_cls
        if module.startswith(_YOLO_MODULE_PREFIXES) and name.isidentifier() and not module.startswith("utils."):
            return _standin(name)
        raise UnsafeCheckpointError(
            f"{self.source}: refused to load: its pickle asks for '{module}.{name}', which is not a YOLOv5 "
            "class, a torch.nn layer or a tensor/container reconstructor (nothing from the file was run)"
        )


class _SafePickleModule:
    """What torch.load needs of a pickle module, with the allow-listing Unpickler."""

    Unpickler = _SafeUnpickler
    Pickler = pickle.Pickler
    UnpicklingError = pickle.UnpicklingError
    dump = staticmethod(pickle.dump)
    dumps = staticmethod(pickle.dumps)

    @staticmethod
    def load(f, **kw):
        return _SafeUnpickler(f, **kw).load()


def safe_torch_load(path: Path) -> Any:
    """torch.load through the allow-list; errors name the file."""
    _SafeUnpickler.source = str(path)
    try:
        return torch.load(path, map_location="cpu", pickle_module=_SafePickleModule, weights_only=False)
    except UnsafeCheckpointError:
        raise
    except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, RuntimeError, OSError, ValueError, TypeError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({msg})") from None


# ---------------------------------------------------------------- loading


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[DetectionModel, dict]:
    """Load an official YOLOv5 `.pt` or one of ours as a float32 DetectionModel plus its metadata."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {path} not found")
    obj = safe_torch_load(path)
    if isinstance(obj, dict) and obj.get("format", "").startswith("yolov5-slim/"):
        model, meta = _from_ours(obj, path)
    elif isinstance(obj, dict) and ("model" in obj or "ema" in obj):
        model, meta = _from_official(obj, path)
    elif isinstance(obj, StandIn):
        model, meta = _from_official({"model": obj}, path)
    elif authors_kind(obj) == "detector":
        model, meta = _from_fastestv2(obj, path)
    else:
        hint = "; a backbone-only state_dict starts a new model with --backbone" if authors_kind(obj) else ""
        raise CheckpointError(
            f"{path}: not a YOLOv5 detector checkpoint (expected an official YOLOv5 .pt, the authors' "
            f"YOLO-FastestV2 state_dict or a {FORMAT} file{hint}, "
            f"found {type(obj).__name__}{' with keys ' + str(sorted(obj)[:8]) if isinstance(obj, dict) else ''})"
        )
    meta.setdefault("source", {})
    meta["source"].setdefault("path", str(path.resolve()))
    meta["source"].setdefault("sha256", file_sha256(path))
    model.input_convention = from_meta(meta)  # travels with the model: every image path reads it from there
    return model.to(device).float(), meta


def load_backbone_weights(model: DetectionModel, path: str | Path) -> DetectionModel:
    """The authors' ImageNet ShuffleNetV2 x0.5 backbone copied into a new yolo-fastestv2 model (any class count):
    the starting point for training YOLO-FastestV2 on a user's data."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"backbone weights file {path} not found")
    try:
        return load_backbone(model, safe_torch_load(path))
    except AuthorsWeightsError as e:
        raise CheckpointError(f"{path}: {e}") from None


def read_checkpoint(path: str | Path) -> dict:
    """Our checkpoint as a plain dict (state_dict, metadata, training state) without building a model."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"{path}: not a {FORMAT} checkpoint ({str(e).splitlines()[0]})") from None
    if not (isinstance(obj, dict) and str(obj.get("format", "")).startswith("yolov5-slim/")):
        raise CheckpointError(f"{path}: not a {FORMAT} checkpoint")
    return obj


def _from_ours(ckpt: dict, path: Path) -> tuple[DetectionModel, dict]:
    arch = ckpt.get("arch") or {}
    try:
        model = DetectionModel(arch["yaml"], shapes=arch.get("shapes"))
    except (KeyError, ModelConfigError) as e:
        raise CheckpointError(f"{path}: architecture cannot be rebuilt ({e})") from None
    state = {k: v.float() if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()}
    _load_state(model, state, path)
    model.names = list(ckpt.get("names") or model.names)
    meta = {k: v for k, v in ckpt.items() if k not in ("state_dict", "train_state")}
    meta["format"] = ckpt["format"]
    return model, meta


def _from_official(ckpt: dict, path: Path) -> tuple[DetectionModel, dict]:
    src = ckpt.get("ema") or ckpt.get("model")
    if src is None:
        raise CheckpointError(f"{path}: official checkpoint holds neither 'ema' nor 'model'")
    cls = type(src).__name__
    if cls in _REFUSED_HEADS:
        raise CheckpointError(f"{path}: holds {_REFUSED_HEADS[cls]} ({cls}); only YOLOv5 detectors are supported")
    if not isinstance(src, StandIn) or not hasattr(src, "yaml") or not hasattr(src, "model"):
        raise CheckpointError(f"{path}: 'model' is a {cls}, not a YOLOv5 detection model")
    head = type(src.model[-1]).__name__
    if head in _REFUSED_HEADS:
        raise CheckpointError(f"{path}: holds {_REFUSED_HEADS[head]} (head {head}); only detectors are supported")
    if head != "Detect":
        raise CheckpointError(f"{path}: last layer is {head}, expected a YOLOv5 Detect head")
    cfg = dict(src.yaml)
    act = _official_activation(src)
    if act and "activation" not in cfg:
        cfg["activation"] = act
    try:
        model = DetectionModel(cfg)
    except ModelConfigError as e:
        raise CheckpointError(f"{path}: its model yaml cannot be rebuilt ({e})") from None
    state = {
        k: v.float() if v.is_floating_point() else v
        for k, v in src.state_dict().items()
        if not k.endswith("anchor_grid")
    }
    _load_state(model, state, path)
    names = getattr(src, "names", None)
    if isinstance(names, dict):
        names = [names[k] for k in sorted(names)]
    model.names = [str(n) for n in names] if names else model.names
    meta = {
        "format": "official",
        "names": model.names,
        "stride": [float(s) for s in model.stride],
        "epoch": ckpt.get("epoch"),
        "date": ckpt.get("date"),
        "history": [],
        "imgsz": _official_imgsz(ckpt),
    }
    return model, meta


def _from_fastestv2(state: dict, path: Path) -> tuple[DetectionModel, dict]:
    try:
        return from_authors_detector(state)
    except AuthorsWeightsError as e:
        raise CheckpointError(f"{path}: {e}") from None


def _official_activation(src: nn.Module) -> str | None:
    for m in src.modules():
        if type(m).__name__ == "Conv" and hasattr(m, "act"):
            a = m.act
            if isinstance(a, nn.LeakyReLU):
                return f"nn.LeakyReLU({a.negative_slope})"
            if isinstance(a, (nn.ReLU, nn.Hardswish, nn.ReLU6, nn.Identity)):
                return f"nn.{type(a).__name__}()"
            return None
    return None


def _official_imgsz(ckpt: dict) -> int:
    opt = ckpt.get("opt")
    img = opt.get("imgsz") if isinstance(opt, dict) else getattr(opt, "img_size", None)
    if isinstance(img, (list, tuple)):
        img = img[0]
    return int(img) if isinstance(img, (int, float)) else 640


def _load_state(model: nn.Module, state: dict, path: Path) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or wrong:
        detail = "; ".join(
            f"{label}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape differs", wrong))
            if keys
        )
        raise CheckpointError(f"{path}: weights do not fit the rebuilt model ({detail})")
    model.load_state_dict(state)


# ---------------------------------------------------------------- saving


# never taken from meta (the input convention is the model's `input_convention`)
_MODEL_DERIVED = ("format", "arch", "state_dict", "names", "stride", "anchors", "date", "input")


def checkpoint_dict(
    model: nn.Module, meta: dict | None = None, extra: dict | None = None, half: bool = False
) -> dict:
    """Our format: plain types and tensors only (loads with weights_only=True).

    half=True stores floating-point weights as fp16 (as official YOLOv5 files do): half the file size for
    deliverables; loading casts back to fp32. Resumable training checkpoints keep fp32.
    """
    m = de_parallel(model)
    meta = dict(meta or {})
    ckpt = {
        "format": FORMAT,
        "arch": {"yaml": plain(m.yaml), "shapes": module_shapes(m)},
        "state_dict": {k: _stored(v, half) for k, v in m.state_dict().items()},
        "names": list(m.names),
        "stride": [float(s) for s in m.stride],
        "anchors": (m.detect.anchors * m.stride.view(-1, 1, 1)).cpu().tolist(),
        "imgsz": int(meta.pop("imgsz", 640)),
        "input": getattr(m, "input_convention", DEFAULT_CONVENTION).as_dict(),
        "history": list(meta.pop("history", [])),
        "source": dict(meta.pop("source", {})),
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
    }
    ckpt.update({k: plain(v) for k, v in meta.items() if k not in _MODEL_DERIVED})
    if extra:
        ckpt["train_state"] = extra
    return ckpt


def save_checkpoint(
    path: str | Path, model: nn.Module, meta: dict | None = None, extra: dict | None = None, half: bool = False
) -> Path:
    """Write atomically (temp file + rename) so a crash never leaves a half-written checkpoint."""
    path = Path(path)
    atomic_torch_save(checkpoint_dict(model, meta, extra, half=half), path)
    return path


def strip_checkpoint(src: str | Path, dst: str | Path, half: bool = True) -> Path:
    """A deliverable copy of a training checkpoint: weights and metadata only (no optimizer/EMA state), fp16."""
    ckpt = read_checkpoint(src)
    ckpt.pop("train_state", None)
    ckpt["state_dict"] = {k: _stored(v, half) for k, v in ckpt["state_dict"].items()}
    atomic_torch_save(ckpt, Path(dst))
    return Path(dst)


def _stored(v: torch.Tensor, half: bool) -> torch.Tensor:
    v = v.detach().cpu().clone()
    return v.half() if half and v.is_floating_point() else v
