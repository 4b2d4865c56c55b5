"""FLOPs and parameters of a pruned model, computed from channel counts without building it.

The planner evaluates this many times while bisecting for a FLOPs/params target, so it is closed-form:
conv FLOPs = 2 * out * in/groups * kh*kw * output pixels (as yolo.flops counts them), conv params
= out * in/groups * kh*kw (+ out for a bias), BatchNorm params = 2 * channels. Everything else (the
part that pruning does not touch) is carried as a constant measured once on the model.
"""

from __future__ import annotations

import numpy as np

from prune.graph import PruneGraph


class CostModel:
    def __init__(self, graph: PruneGraph):
        self.conv_names = list(graph.convs)
        self.bn_names = list(graph.bns)
        ci = {n: i for i, n in enumerate(self.conv_names)}
        bi = {n: i for i, n in enumerate(self.bn_names)}
        geo = [graph.convs[n] for n in self.conv_names]
        self.cout = np.array([g.cout for g in geo], dtype=np.float64)
        self.cin = np.array([g.cin for g in geo], dtype=np.float64)
        self.groups = np.array([g.groups for g in geo], dtype=np.float64)
        self.dw = np.array([g.depthwise for g in geo])
        self.kk = np.array([g.kk for g in geo], dtype=np.float64)
        self.hw = np.array([g.hw for g in geo], dtype=np.float64)
        self.bias = np.array([g.bias for g in geo], dtype=np.float64)
        self.bn_c = np.array([graph.bns[n] for n in self.bn_names], dtype=np.float64)
        links = {"out": [], "in": [], "bn": []}
        for g in graph.groups:
            for m in g.members:
                if m.kind == "bn":
                    links["bn"].append((bi[m.name], g.gid, m.mult))
                else:
                    links["in" if m.kind == "in" else "out"].append((ci[m.name], g.gid, m.mult))
        self.links = {k: np.array(v, dtype=np.int64).reshape(-1, 3) for k, v in links.items()}
        conv_flops, conv_params = self._convs(np.zeros(len(graph.groups)))
        self.flops_other = graph.flops - conv_flops
        self.params_other = graph.params - conv_params
        self.flops0, self.params0 = graph.flops, float(graph.params)

    def _reduction(self, kind: str, removed: np.ndarray, size: int) -> np.ndarray:
        lk = self.links[kind]
        if len(lk) == 0:
            return np.zeros(size)
        return np.bincount(lk[:, 0], weights=removed[lk[:, 1]] * lk[:, 2], minlength=size)

    def _convs(self, removed: np.ndarray) -> tuple[float, float]:
        cout = self.cout - self._reduction("out", removed, len(self.cout))
        cin_pg = np.where(self.dw, 1.0, (self.cin - self._reduction("in", removed, len(self.cin))) / self.groups)
        bn = self.bn_c - self._reduction("bn", removed, len(self.bn_c))
        flops = float((2 * cout * cin_pg * self.kk * self.hw).sum())
        params = float((cout * cin_pg * self.kk + self.bias * cout).sum() + 2 * bn.sum())
        return flops, params

    def widths(self, removed: np.ndarray) -> dict[str, tuple[int, int]]:
        """(input, output) channels of every conv with `removed[g]` channels taken out of group g: what a latency
        predictor reads."""
        removed = np.asarray(removed, dtype=np.float64)
        cout = self.cout - self._reduction("out", removed, len(self.cout))
        cin = np.where(self.dw, cout, self.cin - self._reduction("in", removed, len(self.cin)))
        return {n: (int(round(i)), int(round(o))) for n, i, o in zip(self.conv_names, cin, cout)}

    def evaluate(self, removed: np.ndarray) -> tuple[float, float]:
        """(FLOPs, params) of the model with `removed[g]` channels taken out of group g."""
        flops, params = self._convs(np.asarray(removed, dtype=np.float64))
        return flops + self.flops_other, params + self.params_other
