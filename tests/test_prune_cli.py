"""Checkpoints round-trip, the prune/sweep commands, their run folders and their one-line errors."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

import prune.cli as prune_cli
from prune import PruneConfig, PruneError, prune_model, save_pruned, sweep
from tests.zoo import ZOO, randomize_bn
from tests.zoo import single_thread as single_thread  # noqa: F401  (fixture)
from yolo.checkpoint import CheckpointError, load_model, save_checkpoint

pytestmark = [pytest.mark.usefixtures("single_thread"), pytest.mark.filterwarnings("ignore::prune.PruneWarning")]


def parse(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    prune_cli.register(p.add_subparsers())
    return p.parse_args(list(argv))


@pytest.fixture(scope="module")
def weights(tmp_path_factory, single_thread):
    model = randomize_bn(ZOO["yolov5n"].build(), seed=7).eval()
    path = tmp_path_factory.mktemp("w") / "tiny.pt"
    save_checkpoint(path, model, {"imgsz": 128, "history": [{"op": "train"}]})
    return path


def test_save_reload_and_prune_again(weights, tmp_path):
    model, meta = load_model(weights)
    pruned, table = prune_model(model, PruneConfig(ratio=0.4, imgsz=128, round_to=1))
    path = save_pruned(tmp_path / "p", pruned, meta, table)
    assert path.stat().st_size < weights.stat().st_size
    again, meta2 = load_model(path)
    x = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        a, b = pruned.eval()(x)[0], again.eval()(x)[0]
    # deliverables store fp16 weights like official YOLOv5 files: equal up to half-precision rounding
    torch.testing.assert_close(a, b, rtol=1e-2, atol=1e-2)
    stored = torch.load(path, weights_only=True)["state_dict"]
    assert all(v.dtype == torch.float16 for v in stored.values() if v.is_floating_point())
    assert [h["op"] for h in meta2["history"]] == ["train", "prune"]
    assert meta2["history"][-1]["params_after"] == table.params_after and meta2["imgsz"] == 128
    twice, table2 = prune_model(again, PruneConfig(ratio=0.3, imgsz=128, round_to=1))
    assert table2.channels_before == table.channels_after and table2.channels_after < table2.channels_before
    path2 = save_pruned(tmp_path / "p2", twice, meta2, table2)
    assert path2.stat().st_size < path.stat().st_size
    assert [h["op"] for h in load_model(path2)[1]["history"]] == ["train", "prune", "prune"]


def test_prune_command_writes_run_folder(weights, tmp_path):
    argv = ["prune", "--weights", str(weights), "--ratio", "0.3", "--project", str(tmp_path), "--name", "exp"]
    res = prune_cli.run_prune(parse(*argv))
    run = tmp_path / "exp"
    assert res["save_dir"] == str(run)
    for f in ("pruned.pt", "prune_table.csv", "prune_table.json", "prune_table.txt"):
        assert (run / f).is_file()
    totals = json.loads((run / "prune_table.json").read_text())["totals"]
    assert totals["imgsz"] == 128 and totals["channels_after"] < totals["channels_before"]
    res2 = prune_cli.run_prune(parse("prune", "--weights", str(weights), "--target-flops", "0.6", "--project",
                                     str(tmp_path), "--ignore", "model.0.*", "--importance", "l1", "--round-to", "4"))
    assert res2["save_dir"] == str(tmp_path / "exp2")
    assert res2["table"].flops_kept <= 0.6
    model, _ = load_model(res2["weights"])
    assert model.model[0].conv.out_channels == load_model(weights)[0].model[0].conv.out_channels  # left alone
    assert model.model[1].conv.out_channels % 4 == 0


@pytest.mark.parametrize(
    "extra, match",
    [(["--ratio", "1.5"], "--ratio 1.5 is outside"), (["--ratio", "0.3", "--round-to", "0"], "--round-to 0"),
     (["--ratio", "0.3", "--ignore", "nothing.*"], "matches no layer"),
     (["--target-flops", "0.01"], "cannot be met"), (["--ratio", "0.3", "--compensate", "mean"], "--data"),
     (["--ratio", "0.3", "--reconstruct", "8"], "--data")],
)  # fmt: skip
def test_prune_command_errors_write_nothing(weights, tmp_path, extra, match):
    args = parse("prune", "--weights", str(weights), "--project", str(tmp_path / "runs"), *extra)
    with pytest.raises(PruneError, match=match) as e:
        args.func(args)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "runs").exists()


def test_not_a_detector_checkpoint(tmp_path):
    bad = tmp_path / "bad.pt"
    torch.save({"weights": torch.zeros(3)}, bad)
    args = parse("prune", "--weights", str(bad), "--ratio", "0.3", "--project", str(tmp_path / "runs"))
    with pytest.raises(CheckpointError):
        args.func(args)
    assert not (tmp_path / "runs").exists()


def test_amount_flags_are_exclusive_and_required(weights, tmp_path):
    args = parse("prune", "--weights", str(weights), "--project", str(tmp_path / "runs"))
    with pytest.raises(PruneError, match="nothing to prune: give --ratio, --target-flops, --target-params"):
        args.func(args)  # an amount, --depth or --drop-scale (tests/test_prune_structure.py) is required
    assert not (tmp_path / "runs").exists()
    with pytest.raises(SystemExit):
        parse("prune", "--weights", str(weights), "--ratio", "0.2", "--target-flops", "0.5")


def test_sweep_without_data(weights, tmp_path):
    args = parse("sweep", "--weights", str(weights), "--ratios", "0.2", "0.5", "--project", str(tmp_path))
    res = args.func(args)
    run = tmp_path / "sweep"
    assert {p.name for p in run.iterdir()} >= {"sweep.csv", "sweep.json", "sweep.png"}
    rows = res["result"].rows
    assert [r.ratio for r in rows] == [0.2, 0.5] and rows[1].gflops < rows[0].gflops
    assert res["result"].best_ratio is None and rows[0].map50 is None


def test_sweep_names_largest_ratio_within_share(weights):
    model, _ = load_model(weights)
    fake = {"n": 0}

    def evaluate(m):  # mAP falls with the parameter count
        fake["n"] += 1
        p = sum(x.numel() for x in m.parameters())
        return {"map50": p / 1e5, "map": p / 2e5}

    res = sweep(model, [0.1, 0.3, 0.6], config=PruneConfig(imgsz=128, round_to=1), share=0.7, evaluate_fn=evaluate)
    assert fake["n"] == 4  # unpruned + 3 ratios
    base = res.baseline["map50"]
    ok = [r.ratio for r in res.rows if r.map50 >= 0.7 * base]
    assert res.best_ratio == max(ok)
    assert all(r.map50 < base for r in res.rows)
    with pytest.raises(PruneError, match="sweep ratios"):
        sweep(model, [0.5, 1.0], config=PruneConfig(imgsz=128))


def test_sweep_with_synthetic_data(tmp_path):
    from yolo.synthetic import make_synthetic_dataset

    data = make_synthetic_dataset(tmp_path / "d", n_train=8, n_val=8, img_size=64, seed=0)
    model = randomize_bn(ZOO["yolov5n"].build(), seed=8).eval()
    res = sweep(model, [0.2, 0.5], data=data, config=PruneConfig(imgsz=64), batch_size=8, workers=0)
    assert res.baseline["map50"] >= 0 and all(r.map50 is not None for r in res.rows)
    res.plot(tmp_path / "s.png")


def test_prune_command_reconstructs_on_training_images(weights, tmp_path):
    from yolo.synthetic import make_synthetic_dataset

    data = make_synthetic_dataset(tmp_path / "d", n_train=6, n_val=2, img_size=64, seed=0)
    common = ["prune", "--weights", str(weights), "--ratio", "0.3", "--imgsz", "64", "--project", str(tmp_path)]
    plain = prune_cli.run_prune(parse(*common, "--name", "plain"))
    refit = prune_cli.run_prune(parse(*common, "--name", "refit", "--reconstruct", "6", "--data", str(data)))
    a, b = load_model(plain["weights"])[0], load_model(refit["weights"])[0]
    assert [p.shape for p in a.parameters()] == [p.shape for p in b.parameters()]  # same architecture
    assert any(not torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))  # other weights
    saved = json.loads((tmp_path / "refit" / "prune_table.json").read_text())
    assert saved["config"]["reconstruct"] == 6


def test_sweep_log_names_each_ratio_once(weights):
    model, _ = load_model(weights)
    lines: list[str] = []
    sweep(model, [0.1, 0.3], config=PruneConfig(imgsz=128, round_to=1), log=lines.append)
    assert len(lines) == 2
    for r, line in zip(("0.1", "0.3"), lines):
        head = line.split(":")[0]
        assert head.startswith(f"ratio {r} ") and head.count("ratio") == 1, line
