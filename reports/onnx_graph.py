"""Where the Detect decode starts in an exported graph, and keeping it float in an int8 copy.

The decode (Reshape/Transpose/Sigmoid/Mul/Add/Pow/Concat after the last convolution of each output branch)
must stay in float: quantising it zeroes the confidences (onnxruntime issues 14233, 10787).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import onnx


def _producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in graph.node for out in node.output}


CONV_OPS = ("Conv", "QLinearConv")  # a float convolution, or a QOperator-format int8 one


def decode_nodes(model: onnx.ModelProto) -> tuple[list[str], list[str]]:
    """(names of the nodes between the last convolutions and the outputs, names of those convolutions).

    Walks backwards from every graph output; a convolution stops the walk (it is the branch's last conv), and the
    walk does not follow the data input of Shape nodes (their value does not depend on it).
    """
    graph = model.graph
    producers = _producers(graph)
    decode: dict[str, None] = {}
    convs: dict[str, None] = {}
    seen: set[str] = set()
    stack = [o.name for o in graph.output]
    while stack:
        tensor = stack.pop()
        node = producers.get(tensor)
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if node.op_type in CONV_OPS:
            convs[node.name] = None
            continue
        decode[node.name] = None
        if node.op_type != "Shape":
            stack.extend(i for i in node.input if i)
    return list(decode), list(convs)


def name_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give every unnamed node a unique name (nodes_to_exclude works on names)."""
    used = {n.name for n in model.graph.node if n.name}
    for i, n in enumerate(model.graph.node):
        if not n.name:
            name = f"{n.op_type}_{i}"
            while name in used:
                name += "_"
            n.name = name
            used.add(name)
    return model


def float_decode_check(model: onnx.ModelProto | str | Path) -> list[str]:
    """Problems with the decode region of a quantised model: any Q/DQ or QLinear node after the last convs, except
    the boundary itself: the int8 output of a last convolution turned back into float (Conv -> Q -> DQ, or
    QLinearConv -> DQ), where the head's outputs are quantised on purpose."""
    m = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))
    names, _ = decode_nodes(m)
    by_name = {n.name: n for n in m.graph.node}
    producers = _producers(m.graph)
    bad = []
    for nm in names:
        op = by_name[nm].op_type
        quantised = op in ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear") or op.startswith("QLinear")
        if quantised and not _is_head_boundary(by_name[nm], producers):
            bad.append(f"{op} {nm}")
    return bad


def _is_head_boundary(node: onnx.NodeProto, producers: dict[str, onnx.NodeProto]) -> bool:
    """A QuantizeLinear right after a float conv, or a DequantizeLinear right after a QLinearConv or such a Q."""
    src = producers.get(node.input[0])
    if src is None:
        return False
    if node.op_type == "QuantizeLinear":
        return src.op_type == "Conv"
    if node.op_type == "DequantizeLinear":
        return src.op_type == "QLinearConv" or (src.op_type == "QuantizeLinear" and _is_head_boundary(src, producers))
    return False


def keep_head_outputs_float(model: onnx.ModelProto, head_convs: Sequence[str]) -> None:
    """Drop any QuantizeLinear -> DequantizeLinear pair on a last convolution's output (float into decode)."""
    graph = model.graph
    by_name = {n.name: n for n in graph.node}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    drop = []
    for cname in head_convs:
        conv = by_name.get(cname)
        if conv is None:
            continue
        out = conv.output[0]
        for qn in [c for c in consumers.get(out, []) if c.op_type == "QuantizeLinear"]:
            for dq in [c for c in consumers.get(qn.output[0], []) if c.op_type == "DequantizeLinear"]:
                for user in consumers.get(dq.output[0], []):
                    for k, name in enumerate(user.input):
                        if name == dq.output[0]:
                            user.input[k] = out
                drop.append(dq)
            drop.append(qn)
    for n in drop:
        graph.node.remove(n)
    used = {i for n in graph.node for i in n.input}
    for init in [t for t in graph.initializer if t.name not in used]:
        graph.initializer.remove(init)
