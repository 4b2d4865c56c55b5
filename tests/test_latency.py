"""Interleaved latency measurement and machine description."""

from __future__ import annotations

import pytest

from reports.latency import add_ratios, benchmark, cpu_info, environment, summarise


class Recorder:
    def __init__(self, name: str, log: list[str]):
        self.name, self.log, self.threads = name, log, 1

    def __call__(self) -> None:
        self.log.append(self.name)


def test_round_robin_interleaves_and_rotates():
    log: list[str] = []
    runners = {n: Recorder(n, log) for n in ("a", "b", "c")}
    res = benchmark(runners, runs=4, warmup=2)
    timed = log[6:]  # after 2 warm-up runs of each
    assert log[:6] == ["a", "a", "b", "b", "c", "c"]
    assert timed == ["a", "b", "c", "b", "c", "a", "c", "a", "b", "a", "b", "c"]
    assert all(r["runs"] == 4 for r in res.values())
    assert set(res["a"]) >= {"median_ms", "p90_ms", "mean_ms", "min_ms", "runs", "threads", "kind"}


def test_bursts_and_bad_arguments():
    log: list[str] = []
    res = benchmark({"a": Recorder("a", log), "b": Recorder("b", log)}, runs=5, warmup=0, burst=2)
    assert log == ["a", "a", "b", "b", "b", "b", "a", "a", "a", "b"]
    assert res["a"]["runs"] == res["b"]["runs"] == 5
    with pytest.raises(ValueError):
        benchmark({"a": Recorder("a", [])}, runs=0)


def test_summary_and_ratios():
    s = summarise([1.0, 2.0, 3.0, 4.0, 100.0])
    assert s["median_ms"] == 3.0 and s["min_ms"] == 1.0 and 4.0 < s["p90_ms"] < 100.0
    res = {"base": {"median_ms": 10.0}, "fast": {"median_ms": 5.0}}
    add_ratios(res, "base")
    assert res["fast"]["speedup"] == 2.0 and res["fast"]["ratio_to_baseline"] == 0.5


def test_machine_description():
    info = cpu_info()
    assert info["logical_cores"] >= 1 and info["usable_cores"] >= 1
    assert isinstance(info["flags"], list) and isinstance(info["model"], str)
    env = environment()
    assert env["onnxruntime"] and env["torch"] and env["python"]


def test_io_binding_runner_computes_the_same_output(tmp_path):
    """The bound run is a real inference: its preallocated output holds what session.run returns."""
    import numpy as np
    from test_sparsity import TINY

    from reports.export import export_onnx
    from reports.latency import OnnxRunner, benchmark_files
    from yolo.model import build_model

    path = export_onnx(build_model(TINY).eval(), tmp_path / "tiny.onnx", imgsz=64)
    plain, bound = OnnxRunner(path, threads=1, imgsz=64), OnnxRunner(path, threads=1, imgsz=64, io_binding=True)
    assert bound.kind == "onnxruntime-iobinding" and plain.binding is None
    bound._y_value.numpy()[...] = -1.0
    bound()
    expected = plain.det.session.run(None, {plain.det.input_name: plain.x})[0]
    np.testing.assert_allclose(bound._y_value.numpy(), expected, rtol=1e-6, atol=1e-6)
    res = benchmark_files({"a": path}, threads=[1], runs=3, warmup=1, imgsz=64, io_binding=True)
    assert res["settings"]["io_binding"] is True and res["results"]["1"]["a"]["kind"] == "onnxruntime-iobinding"
