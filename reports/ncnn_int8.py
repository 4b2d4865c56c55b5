"""ncnn int8 from Python: what ncnn's C++ tools `ncnn2table` (calibration) and `ncnn2int8` do, for the
convolutions of a model pnnx converted, so `--format ncnn --int8` needs nothing beyond the `ncnn` wheel.

Why here and not through ncnn's tools: neither the ncnn nor the pnnx wheel ships them, and users of the
ShuffleNetV2-YOLOv5 / YOLO-FastestV2 world deploy ncnn int8 on ARM boards.

What it writes is ncnn's own int8 format, read by the stock runtime:
- the .param: every quantised Convolution gains `8=2` (per-output-channel weight scales), every quantised
  ConvolutionDepthWise `8=1` (one scale per group);
- the .bin: that layer's weights stored as int8 behind ncnn's int8 tag (0x000D4B38, padded to 4 bytes), its bias
  unchanged (fp32), then its weight scales and the one scale of its input blob (fp32, untagged).
Every other layer and byte is copied as it was. The .bin is walked layer by layer from the .param; a layer type
whose weights this reader does not know stops the export with its name (rather than a shifted, corrupt file),
and the walk must account for every byte of the .bin.

Scales: weights 127 / max|w| per output channel (per group for depthwise); inputs from calibration on real
images through the fp32 model, by ncnn2table's default rule (KL divergence between the clipped histogram of
|x| and its 128-level quantisation: the threshold that keeps the distribution) or, with method "max", 127 / max|x|.

This module imports `ncnn` at the top: import it only after `reports.backends.require_extra`.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import ncnn
import numpy as np

from reports.export import ExportError

INT8_TAG, FP16_TAG = 0x000D4B38, 0x01306B47
QUANTISABLE = ("Convolution", "ConvolutionDepthWise")
# layer types that keep weights in the .bin but that this reader does not walk: met, they stop the export
UNWALKED = ("InnerProduct", "BatchNorm", "Scale", "PReLU", "Deconvolution", "DeconvolutionDepthWise", "Embed",
            "Gemm", "LayerNorm", "GroupNorm", "InstanceNorm", "MultiHeadAttention", "Convolution1D",
            "Convolution3D", "ConvolutionDepthWise1D", "ConvolutionDepthWise3D", "Normalize", "RMSNorm",
            "LSTM", "GRU", "RNN", "Bias", "Deconvolution1D", "Deconvolution3D")  # fmt: skip
HIST_BINS, TARGET_BINS = 2048, 128


# ------------------------------------------------------------------------------------------- the .param


@dataclass
class ParamLayer:
    """One layer line of an ncnn .param: type, name, blob names and the raw `key=value` tokens."""

    type: str
    name: str
    bottoms: list[str]
    tops: list[str]
    params: dict[str, str] = field(default_factory=dict)
    tokens: list[str] = field(default_factory=list)

    def get_int(self, key: int | str, default: int = 0) -> int:
        return int(self.params[str(key)]) if str(key) in self.params else default

    def line(self) -> str:
        return " ".join([self.type, self.name, str(len(self.bottoms)), str(len(self.tops)),
                         *self.bottoms, *self.tops, *self.tokens])  # fmt: skip


def read_param(path: Path) -> tuple[list[str], list[ParamLayer]]:
    """(the two header lines, the layers) of a text .param; ExportError naming the line when it is not one."""
    lines = [ln for ln in Path(path).read_text().splitlines() if ln.strip()]
    if len(lines) < 2 or lines[0].strip() != "7767517":
        raise ExportError(f"{path}: not an ncnn text .param (its first line should be the magic 7767517)")
    layers = []
    for i, ln in enumerate(lines[2:], start=3):
        tok = ln.split()
        try:
            nb, nt = int(tok[2]), int(tok[3])
        except (IndexError, ValueError):
            raise ExportError(f"{path}:{i}: expected 'type name bottoms tops ...', got {ln[:60]!r}") from None
        rest = tok[4 + nb + nt:]
        params = dict(t.split("=", 1) for t in rest if "=" in t)
        layers.append(ParamLayer(tok[0], tok[1], tok[4:4 + nb], tok[4 + nb:4 + nb + nt], params, rest))
    return lines[:2], layers


# ------------------------------------------------------------------------------------------- the .bin


@dataclass
class BinPart:
    """A piece of the .bin: raw bytes copied as they are, or one layer's float weights (and bias) to quantise."""

    layer: ParamLayer | None
    raw: bytes = b""
    weight: np.ndarray | None = None
    bias: bytes = b""


class _Reader:
    def __init__(self, data: bytes, where: str):
        self.data, self.pos, self.where = data, 0, where

    def take(self, n: int, what: str) -> bytes:
        if self.pos + n > len(self.data):
            raise ExportError(f"{self.where}: the .bin ends inside {what} (it does not match the .param)")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def tagged_fp32(self, count: int, what: str) -> np.ndarray:
        """A weight blob ncnn reads with type 0: a 4-byte tag, then the data (fp32 only is quantised here)."""
        (tag,) = struct.unpack("<I", self.take(4, what))
        if tag == INT8_TAG:
            raise ExportError(f"{self.where}: {what} is already int8 (quantise an fp32 ncnn model)")
        if tag != 0:
            kind = "fp16" if tag == FP16_TAG else f"tag {tag:#010x}"
            raise ExportError(f"{self.where}: {what} is stored as {kind}; int8 is made from an fp32 .bin")
        return np.frombuffer(self.take(4 * count, what), dtype="<f4").copy()


def split_bin(layers: Sequence[ParamLayer], data: bytes, where: str) -> list[BinPart]:
    """The .bin cut at its layers, in .param order; raises on a weighted layer type not walked here or on bytes
    left over (either would make the rewritten file unreadable)."""
    r, parts = _Reader(data, where), []
    for ly in layers:
        if ly.type in UNWALKED:
            raise ExportError(f"{where}: layer {ly.name} ({ly.type}) keeps weights this int8 writer does not walk; "
                              "export ncnn without --int8")  # fmt: skip
        if ly.type in QUANTISABLE:
            if ly.get_int(19) or ly.get_int(8):
                raise ExportError(f"{where}: layer {ly.name} has dynamic or int8 weights already")
            n_out, size = ly.get_int(0), ly.get_int(6)
            w = r.tagged_fp32(size, f"the weights of {ly.name}")
            bias = r.take(4 * n_out, f"the bias of {ly.name}") if ly.get_int(5) else b""
            parts.append(BinPart(ly, weight=w, bias=bias))
        elif ly.type == "MemoryData":
            w, h, d, c = (ly.get_int(k) for k in ("0", "1", "11", "2"))
            count = max(w, 1) * max(h, 1) * max(d, 1) * max(c, 1) if w else 0
            parts.append(BinPart(ly, raw=r.take(4 * count, f"the data of {ly.name}")))
    if r.pos != len(data):
        raise ExportError(f"{where}: {len(data) - r.pos} bytes of the .bin are not accounted for by its .param")
    return parts


# ------------------------------------------------------------------------------------------- scales


def weight_scales(w: np.ndarray, groups: int) -> np.ndarray:
    """127 / max|w| for each of `groups` equal slices of the flat weights (0 weights: scale 1)."""
    amax = np.abs(w.reshape(groups, -1)).max(axis=1)
    return np.where(amax > 0, 127.0 / np.maximum(amax, 1e-30), 1.0).astype(np.float32)


def to_int8(w: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """ncnn's float2int8: round half away from zero, clamp to [-127, 127]."""
    v = w.reshape(len(scales), -1) * scales[:, None]
    q = np.sign(v) * np.floor(np.abs(v) + 0.5)
    return np.clip(q, -127, 127).astype(np.int8).reshape(-1)


def kl_threshold_bin(hist: np.ndarray, target: int = TARGET_BINS) -> int:
    """The histogram bin (exclusive end) whose clipping keeps |x|'s distribution best under `target` levels:
    minimum KL(P || Q), P the histogram clipped there (outliers added to its last bin), Q P's quantisation."""
    hist = hist.astype(np.float64)
    best, best_i = np.inf, len(hist)
    for i in range(target, len(hist) + 1):
        p = hist[:i].copy()
        p[-1] += hist[i:].sum()
        if p.sum() == 0:
            continue
        src = hist[:i]
        nz = src > 0
        cid = np.arange(i) * target // i  # which of the `target` levels each bin falls in
        sums = np.bincount(cid, weights=src, minlength=target)
        counts = np.bincount(cid, weights=nz, minlength=target)
        q = np.where(nz, sums[cid] / np.maximum(counts[cid], 1), 0.0)  # a level's mass spread over its used bins
        p /= p.sum()
        qs = q.sum()
        if qs == 0:
            continue
        q /= qs
        m = p > 0
        kl = float(np.sum(p[m] * np.log(p[m] / np.maximum(q[m], 1e-12))))
        if kl < best:
            best, best_i = kl, i
    return best_i


def calibrate_blobs(
    net: ncnn.Net, blobs: Sequence[str], inputs: Callable[[], Iterable[np.ndarray]], method: str = "max",
) -> dict[str, float]:
    """Input scale (127 / threshold) of each blob, from the fp32 `net` run on the calibration `inputs` (each
    (3, h, w) in the model's convention). Two passes (max, then histograms) keep memory at one image's blobs."""
    in_name = net.input_names()[0]

    def each_blob():
        for x in inputs():
            with net.create_extractor() as ex:
                ex.set_light_mode(False)  # keep every blob: many are extracted from one run
                ex.input(in_name, ncnn.Mat(np.ascontiguousarray(x)))
                for b in blobs:
                    ret, m = ex.extract(b)
                    if ret != 0:
                        raise ExportError(f"ncnn could not compute blob {b} to calibrate it")
                    yield b, np.abs(np.array(m, copy=False)).ravel()

    amax = dict.fromkeys(blobs, 0.0)
    for b, a in each_blob():
        amax[b] = max(amax[b], float(a.max(initial=0.0)))
    if method == "max":
        return {b: 127.0 / v if v > 0 else 1.0 for b, v in amax.items()}
    if method != "kl":
        raise ValueError(f"calibration method {method!r}: expected 'kl' or 'max'")
    hists = {b: np.zeros(HIST_BINS, np.int64) for b in blobs}
    for b, a in each_blob():
        if amax[b] > 0:
            hists[b] += np.histogram(a, bins=HIST_BINS, range=(0.0, amax[b]))[0]
    out = {}
    for b in blobs:
        if amax[b] <= 0:
            out[b] = 1.0
            continue
        width = amax[b] / HIST_BINS
        out[b] = 127.0 / (kl_threshold_bin(hists[b]) * width)  # the upper edge of the last bin kept
    return out


# ------------------------------------------------------------------------------------------- writing


@dataclass
class Int8Plan:
    """What the int8 writer did: layers quantised, layers kept float (and why), the calibration used."""

    quantised: list[str]
    kept_float: dict[str, str]
    method: str
    calib_images: int


def quantisable_layers(layers: Sequence[ParamLayer], keep_float: Sequence[str] = ()) -> tuple[list[ParamLayer],
                                                                                               dict[str, str]]:
    """The convolutions to quantise, and the ones kept float with the reason."""
    chosen, kept = [], {}
    for ly in layers:
        if ly.type not in QUANTISABLE:
            continue
        if ly.name in keep_float:
            kept[ly.name] = "asked to stay float"
        elif len(ly.bottoms) != 1:
            kept[ly.name] = "more than one input"
        else:
            chosen.append(ly)
    return chosen, kept


def write_int8(
    header: list[str], layers: list[ParamLayer], parts: list[BinPart], input_scales: dict[str, float],
    chosen: Sequence[ParamLayer], param_out: Path, bin_out: Path,
) -> None:
    """The int8 .param and .bin (see the module docstring for the layout)."""
    names = {ly.name for ly in chosen}
    out = bytearray()
    for part in parts:
        ly = part.layer
        if part.weight is None:
            out += part.raw
            continue
        if ly.name not in names:
            out += struct.pack("<I", 0) + part.weight.astype("<f4").tobytes() + part.bias
            continue
        depthwise = ly.type == "ConvolutionDepthWise"
        groups = ly.get_int(7, 1) if depthwise else ly.get_int(0)
        ws = weight_scales(part.weight, groups)
        q = to_int8(part.weight, ws).tobytes()
        out += struct.pack("<I", INT8_TAG) + q + b"\0" * (-len(q) % 4) + part.bias
        out += ws.astype("<f4").tobytes() + struct.pack("<f", input_scales[ly.bottoms[0]])
    for ly in chosen:
        ly.tokens.append("8=1" if ly.type == "ConvolutionDepthWise" else "8=2")
        ly.params["8"] = ly.tokens[-1][2:]
    param_out.write_text("\n".join([*header, *(ly.line() for ly in layers)]) + "\n")
    bin_out.write_bytes(bytes(out))


def quantise_ncnn(
    param: Path, net: ncnn.Net, param_out: Path, bin_out: Path, inputs: Callable[[], Iterable[np.ndarray]],
    n_images: int, keep_float: Sequence[str] = (), method: str = "max",
) -> Int8Plan:
    """fp32 ncnn model (`param`, its .bin, and `net` loaded from them to calibrate) -> int8 model: every
    convolution with one input is quantised, except `keep_float`."""
    header, layers = read_param(param)
    parts = split_bin(layers, Path(param).with_suffix(".bin").read_bytes(), str(Path(param).with_suffix(".bin")))
    chosen, kept = quantisable_layers(layers, keep_float)
    if not chosen:
        raise ExportError(f"{param}: no convolution to quantise")
    blobs = sorted({ly.bottoms[0] for ly in chosen})
    scales = calibrate_blobs(net, blobs, inputs, method)
    write_int8(header, layers, parts, scales, chosen, param_out, bin_out)
    return Int8Plan([ly.name for ly in chosen], kept, method, n_images)


def head_convolutions(layers: Sequence[ParamLayer]) -> list[str]:
    """The convolutions whose output reaches no other convolution: the Detect output convs, whose values the decode
    turns straight into boxes and scores (kept float by default, as the ONNX Runtime path keeps the decode)."""
    consumers: dict[str, list[ParamLayer]] = {}
    for ly in layers:
        for b in ly.bottoms:
            consumers.setdefault(b, []).append(ly)

    def reaches_conv(blob: str, seen: set[str]) -> bool:
        for ly in consumers.get(blob, []):
            if ly.type in QUANTISABLE:
                return True
            if ly.name not in seen:
                seen.add(ly.name)
                if any(reaches_conv(t, seen) for t in ly.tops):
                    return True
        return False

    return [ly.name for ly in layers if ly.type in QUANTISABLE and not any(reaches_conv(t, set()) for t in ly.tops)]
