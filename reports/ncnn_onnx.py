"""The exported ONNX made convertible to ncnn, on the copy pnnx reads (the .onnx file handed out is untouched).

ShuffleNetV2 as YOLO-FastestV2's authors wrote it splits channels into even and odd (`x[:, 0::2], x[:, 1::2]`),
which the ONNX graph holds as Slice nodes with step 2 on the channel axis. ncnn has no strided slice: pnnx
leaves them as `Tensor.slice` and ncnn refuses the model. Each such slice is the same as a reshape that puts
the `step` interleaved channels on their own axis, a plain slice of that axis and a reshape back:

    x[:, s::k]  ==  x.reshape(b, c / k, k, h * w)[:, :, s : s + 1].reshape(b, c / k, h, w)

which pnnx turns into ncnn's Reshape, Crop and Reshape. Only slices that take every k-th channel from s to the
end (s < k) of a static 4-D tensor are rewritten; anything else is left for pnnx, and a model ncnn still cannot
load is reported by the layer types pnnx could not convert (`unconverted_layers`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper


def _const(graph: onnx.GraphProto, name: str) -> np.ndarray | None:
    for init in graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    for node in graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            return numpy_helper.to_array(node.attribute[0].t)
    return None


def _static_shape(model: onnx.ModelProto, name: str) -> list[int] | None:
    for vi in [*model.graph.value_info, *model.graph.input, *model.graph.output]:
        if vi.name == name:
            dims = [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
            return dims if all(dims) else None
    return None


def _strided_channel_slice(model: onnx.ModelProto, node: onnx.NodeProto) -> tuple[int, int, list[int]] | None:
    """(start, step, input shape) when `node` is x[:, start::step] of a static (b, c, h, w) tensor."""
    if node.op_type != "Slice" or len(node.input) < 5:
        return None
    g = model.graph
    starts, ends, axes, steps = (_const(g, n) for n in node.input[1:5])
    shape = _static_shape(model, node.input[0])
    if any(v is None or v.size != 1 for v in (starts, ends, axes, steps)) or shape is None or len(shape) != 4:
        return None
    s, e, a, k = (int(v.reshape(-1)[0]) for v in (starts, ends, axes, steps))
    if a not in (1, -3) or k < 2 or not 0 <= s < k or e < shape[1] or shape[1] % k:
        return None
    return s, k, shape


def rewrite_strided_slices(src: Path, dst: Path) -> int:
    """Write `src` to `dst` with every strided channel slice replaced (module docstring); returns how many."""
    model = onnx.shape_inference.infer_shapes(onnx.load(str(src)))
    g = model.graph
    nodes, count = [], 0
    for node in g.node:
        hit = _strided_channel_slice(model, node)
        if hit is None:
            nodes.append(node)
            continue
        s, k, (b, c, h, w) = hit
        p = f"ncnn_strided_{count}"
        consts = {f"{p}_shape_in": [b, c // k, k, h * w], f"{p}_starts": [s], f"{p}_ends": [s + 1],
                  f"{p}_axes": [2], f"{p}_shape_out": [b, c // k, h, w]}  # fmt: skip
        g.initializer.extend(numpy_helper.from_array(np.array(v, np.int64), n) for n, v in consts.items())
        nodes += [
            helper.make_node("Reshape", [node.input[0], f"{p}_shape_in"], [f"{p}_grouped"], name=f"{p}_reshape_in"),
            helper.make_node("Slice", [f"{p}_grouped", f"{p}_starts", f"{p}_ends", f"{p}_axes"], [f"{p}_picked"],
                             name=f"{p}_slice"),  # fmt: skip
            helper.make_node("Reshape", [f"{p}_picked", f"{p}_shape_out"], list(node.output), name=f"{p}_reshape_out"),
        ]
        count += 1
    if count:
        del g.node[:]
        g.node.extend(nodes)
        onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    return count


# ncnn layer types: what pnnx writes when it converts an operator (anything else, e.g. `Tensor.slice` or
# `F.something`, is pnnx's name for an operator it could not convert)
def unconverted_layers(param: Path) -> dict[str, int]:
    """{layer type: count} of the .param's layers that are pnnx operator names rather than ncnn layers."""
    out: dict[str, int] = {}
    for line in Path(param).read_text().splitlines()[2:]:
        kind = line.split(maxsplit=1)[0] if line.strip() else ""
        if "." in kind:
            out[kind] = out.get(kind, 0) + 1
    return out
