"""bench/pareto.py: the map's front, verdicts and table from row records (fast), the README line, and every row's
plumbing end to end at a toy size (slow; needs ../shared)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def bench_on_path(monkeypatch):
    monkeypatch.setattr(sys, "path", [*sys.path, str(REPO / "bench")])  # appended: bench/sparsity.py must not shadow


def _rows(**points: tuple[float, float]) -> dict:
    """row -> figures with (latency ms, mAP50); speed-ups over the yolov5n row."""
    base = points["yolov5n"][0]
    return {r: {"latency_ms": ms, "map50": m, "speedup": base / ms} for r, (ms, m) in points.items()}


def test_front_keeps_only_rows_no_other_beats_on_both():
    from benchlib.pareto_map import front

    rows = _rows(yolov5n=(10, 0.80), p70=(7, 0.79), p70i8=(6, 0.70), lite=(8, 0.60), fv2=(3, 0.65), slow=(12, 0.5))
    assert front(rows) == {"yolov5n", "p70", "p70i8", "fv2"}


def test_verdicts_name_the_fastest_within_two_points_and_the_best_at_2x_and_3x():
    from benchlib.pareto_map import verdicts

    rows = _rows(yolov5n=(10, 0.80), p70=(7, 0.785), p50=(5, 0.77), fv2=(3, 0.65), fv2p=(2.5, 0.60))
    v = verdicts(rows)
    assert v["fastest_within_2_points"]["row"] == "p70"  # p50 is 3 points behind
    assert v["fastest_within_2_points"]["speedup"] == pytest.approx(10 / 7)
    assert v["most_accurate_at_2x"]["row"] == "p50"
    assert v["most_accurate_at_3x"]["row"] == "fv2"
    assert verdicts(_rows(yolov5n=(10, 0.8), a=(9, 0.5)))["most_accurate_at_3x"] is None
    assert "note" in verdicts({"fv2": {"latency_ms": 3, "map50": 0.6, "speedup": None}})


def _record(folder: Path, row: str, **figures) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{row}.json").write_text(json.dumps({"figures": {"row": row, **figures}}))


def test_finished_rows_need_their_onnx_and_not_offered_rows_are_kept_apart(tmp_path):
    from benchlib.pareto_map import finished_rows

    onnx = tmp_path / "a.onnx"
    onnx.write_bytes(b"x")
    runs = tmp_path / "pareto_runs"
    _record(runs, "fastestv2", onnx=str(onnx))
    _record(runs, "yolov5n", onnx=str(onnx))
    _record(runs, "yolov5n-p50", onnx=str(tmp_path / "gone.onnx"))
    _record(runs, "fastestv2-teacher", status="not offered", message="refused")
    timed, offered = finished_rows(runs)
    assert list(timed) == ["yolov5n", "fastestv2"]  # the map's row order, not the file names'
    assert offered == {"fastestv2-teacher": {"row": "fastestv2-teacher", "status": "not offered",
                                             "message": "refused"}}


def test_markdown_states_epochs_seed_verdicts_and_what_is_missing_and_readme_line():
    from benchlib.pareto_map import markdown, verdicts
    from benchlib.readme_block import pareto_line

    rows = _rows(yolov5n=(10, 0.80), fastestv2=(3, 0.79))
    for r, f in rows.items():
        f.update(label=r, epochs_text="90 epochs", seed=0, imgsz=320, input="letterbox-rgb", params=1e6,
                 onnx_mb=1.0, gflops=1.0, map=0.4, front=True)
    fig = {"rows": rows, "not_offered": {"fastestv2-teacher": "refused"}, "verdicts": verdicts(rows),
           "latency_runs": 30, "data": "helmets"}
    md = markdown(fig)
    assert "| yolov5n | yolov5n | 90 epochs | 0 |" in md and "3.33x" in md
    assert "**fastestv2**, 3.33x its speed" in md and "- fastestv2-teacher: refused" in md
    assert "Not built yet: yolov5n-p70" in md and "pareto.png" in md
    line = pareto_line(fig)
    assert "**fastestv2**, 3.33x" in line and "most accurate at >= 3x: **fastestv2**" in line
    assert pareto_line({"verdicts": {"note": "no yolov5n row yet"}}) == ""
    assert pareto_line({**fig, "rows": {"yolov5n": rows["yolov5n"]}}) == ""  # the yardstick alone: no line


def test_smoke_needs_an_out_other_than_bench_results():
    import pareto

    with pytest.raises(SystemExit):
        pareto.parse_args(["--smoke", "--out", str(REPO / "bench" / "results")])


@pytest.mark.slow
@pytest.mark.shared
def test_smoke_builds_every_row_then_the_map_and_resumes(shared_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    import pareto

    out = tmp_path / "out"
    assert pareto.main(["--smoke", "--out", str(out), "--runs", "30"]) == 0
    doc = json.loads((out / "pareto.json").read_text())["figures"]
    assert set(doc["rows"]) | set(doc["not_offered"]) == set(pareto.ROWS)
    assert "FastestDetect student" in doc["not_offered"]["fastestv2-teacher"]
    assert all(f["seed"] == 0 and f["epochs_text"] for f in doc["rows"].values())
    assert (out / "pareto.png").stat().st_size > 0
    capsys.readouterr()
    assert pareto.main(["--smoke", "--out", str(out), "--map"]) == 0
    assert "rows built now" not in capsys.readouterr().out


def test_a_finished_row_keeps_its_weights_beside_the_record_and_a_new_sitting_exports_them_again(
    tmp_path, monkeypatch
):
    """A later sitting without the run folder: the record names <row>.pt beside itself (fp16, stripped), and the
    map exports the ONNX again from it, with the same outputs as the file the row was scored on. Without that model
    (a new checkout: models are not committed) the map times the recorded architecture rebuilt untrained (the same
    graph: inputs, outputs, node types), a record without one is left out, and a row another row builds on is
    trained again."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from benchlib import pareto_rows
    from benchlib.pareto_map import finished_rows
    from benchlib.pareto_rows import Setup, architecture, read_row, row_onnx, save_row, trained_row

    from reports.export import export_onnx
    from tests.zoo import ZOO, randomize_bn
    from yolo.checkpoint import load_model, save_checkpoint

    run = tmp_path / "runs" / "yolov5n"
    weights = save_checkpoint(run / "weights" / "best.pt", randomize_bn(ZOO["yolov5n"].build(), seed=1).eval(),
                              {"imgsz": 64}, half=True)
    model, meta = load_model(weights)
    first = export_onnx(model, run / "yolov5n.onnx", imgsz=64, metadata=meta)
    s = Setup(data=tmp_path / "d.yaml", weights=weights, backbone=weights, project=tmp_path / "runs",
              records=tmp_path / "records")
    save_row(s, "yolov5n", "yardstick", {"weights": str(weights), "onnx": str(first), "imgsz": 64,
                                         "input": "letterbox-rgb", "map50": 0.5, "map": 0.3, "params": 1, "gflops": 1.0,
                                         "onnx_mb": 1.0, "epochs_text": "1 epoch"})  # fmt: skip
    doc = json.loads((s.records / "yolov5n.json").read_text())["figures"]
    assert doc["weights"] == "yolov5n.pt" and doc["onnx"] is None and (s.records / "yolov5n.pt").is_file()
    x = np.random.default_rng(0).random((1, 3, 64, 64), dtype=np.float32)
    want = ort.InferenceSession(str(first)).run(None, {"images": x})[0]

    def graph(path):
        sess = ort.InferenceSession(str(path))
        ops = sorted(n.op_type for n in onnx.load(str(path)).graph.node)
        return [(i.name, i.shape) for i in sess.get_inputs()], [(o.name, o.shape) for o in sess.get_outputs()], ops

    first_graph = graph(first)
    import shutil

    shutil.rmtree(tmp_path / "runs")  # the new sitting
    s.project = tmp_path / "runs2"
    again = Path(read_row(s, "yolov5n")["onnx"])
    assert again == row_onnx(s, "yolov5n", doc) and again.is_file() and again.parent.parent == s.project
    np.testing.assert_allclose(ort.InferenceSession(str(again)).run(None, {"images": x})[0], want, rtol=1e-5, atol=1e-5)
    timed, _ = finished_rows(s.records, lambda r, f: row_onnx(s, r, f))
    assert timed["yolov5n"]["onnx"] == str(again)
    assert finished_rows(s.records)[0] == {}  # without the exporter only a kept ONNX counts
    (s.records / "yolov5n.pt").unlink()
    shutil.rmtree(s.project)
    assert read_row(s, "yolov5n")["onnx"] is None  # recorded, its trained model gone
    assert finished_rows(s.records, lambda r, f: row_onnx(s, r, f))[0] == {}  # no architecture recorded: left out
    path = s.records / "yolov5n.json"
    record = json.loads(path.read_text())
    record["figures"]["arch"] = architecture(model)
    path.write_text(json.dumps(record))
    timed, _ = finished_rows(s.records, lambda r, f: row_onnx(s, r, f))
    rebuilt = timed["yolov5n"]["onnx"]
    assert timed["yolov5n"]["timed"] == "architecture" and Path(rebuilt).stem == "yolov5n-arch"
    assert graph(rebuilt) == first_graph
    calls = []
    monkeypatch.setattr(pareto_rows, "build_row", lambda s, row: calls.append(row) or {"row": row})
    assert trained_row(s, "yolov5n") == {"row": "yolov5n"} and calls == ["yolov5n"]


def test_an_int8_row_without_its_file_is_timed_as_its_architecture_quantised_as_it_was(tmp_path):
    """An int8 row's record keeps the quantisation it was built with; without the file the map quantises the
    rebuilt architecture the same way (calibrated on the data's train images) instead of leaving the row out."""
    from dataclasses import asdict

    import onnx
    from benchlib.pareto_rows import Setup, architecture, row_onnx

    from reports.quantize import Int8Config
    from tests.zoo import ZOO
    from yolo.synthetic import make_synthetic_dataset

    data = make_synthetic_dataset(tmp_path / "d", n_train=4, n_val=2, img_size=64, seed=1)
    model = ZOO["yolov5n"].build()
    s = Setup(data=Path(data), weights=tmp_path / "none.pt", backbone=tmp_path / "none.pth",
              project=tmp_path / "runs", records=tmp_path / "records")
    config = Int8Config(images=4)
    figures = {"row": "yolov5n-p70-int8", "imgsz": 64, "onnx": "yolov5n-p70-int8.onnx", "arch": architecture(model),
               "int8": {"variant": asdict(config)}}
    path = row_onnx(s, "yolov5n-p70-int8", figures)
    assert path.name == "yolov5n-p70-int8-arch.onnx" and path.is_file()
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops  # QDQ, as the recorded variant
    assert row_onnx(s, "yolov5n-p70-int8", figures) == path  # made once per checkout


def test_the_maps_labels_do_not_cover_each_other_or_a_point():
    import numpy as np

    from reports.plots import label_offsets

    names = ["yolov5n-p50-int8", "yolov5n-p50", "yolov5n-p70-256", "far"]
    xy = np.array([[300.0, 200.0], [302.0, 198.0], [280.0, 190.0], [50.0, 50.0]])  # three crowded points
    offsets = label_offsets(xy, names)
    boxes = [(x + dx, y + dy, x + dx + 0.55 * 7 * len(n), y + dy + 9)
             for (x, y), (dx, dy), n in zip(xy, offsets, names)]
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert min(a[2], b[2]) <= max(a[0], b[0]) or min(a[3], b[3]) <= max(a[1], b[1])
        for x, y in xy:
            assert not (a[0] < x < a[2] and a[1] < y < a[3])
    assert offsets[3] == (4.0, 4.0)  # a lone point keeps the first place: right, above
    edge = label_offsets(np.array([[395.0, 100.0]]), ["v5lite-s"], frame=(0.0, 0.0, 400.0, 300.0))
    assert edge[0][0] < 0  # at the right edge of the axes the label goes left of its point
