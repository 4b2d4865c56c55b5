"""DistributedDataParallel on CPU: two gloo processes train one epoch and end with identical weights."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import torch
import torch.multiprocessing as mp
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from test_finetune_train import NO_AUG, TINY_CFG  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _DumpWeights:
    def __init__(self, out: Path):
        self.out = out

    def on_train_end(self, trainer, result):
        params = {k: v.detach().clone() for k, v in trainer.bare_model.named_parameters()}
        torch.save({"params": params, "steps": trainer.optimizer_steps, "run_dir": str(trainer.run_dir),
                    "sr_steps": trainer.callbacks.items[0].steps}, self.out / f"rank{trainer.dist.rank}.pt")


def _worker(rank: int, world: int, port: int, root: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    from finetune.trainer import TrainOptions, train

    root_p = Path(root)
    train(TrainOptions(data=str(root_p / "data" / "data.yaml"), cfg=str(root_p / "tiny.yaml"), epochs=1,
                       batch_size=4, nbs=4, imgsz=64, device="cpu", workers=0, project=str(root_p / "runs"),
                       hyp_overrides=dict(NO_AUG), sparsity=0.01, noval=True, quiet=True),
          callbacks=[_DumpWeights(root_p)])


def test_two_process_gloo_identical_weights(tmp_path):
    from yolo.synthetic import make_synthetic_dataset

    make_synthetic_dataset(tmp_path / "data", n_train=8, n_val=2, img_size=96, seed=5)
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(TINY_CFG))
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    # 8 images over 2 processes, 2 per process per batch: 2 batches; total batch 4 = nbs: a step per batch
    assert r0["steps"] == r1["steps"] == 2 and r0["sr_steps"] == r1["sr_steps"] == 2
    for k, v in r0["params"].items():
        assert torch.equal(v, r1["params"][k]), k
    assert r0["run_dir"] == str(tmp_path / "runs" / "exp") and r1["run_dir"] == "None"  # only rank 0 writes
    assert (tmp_path / "runs" / "exp" / "weights" / "last.pt").is_file()
    assert not (tmp_path / "runs" / "exp2").exists()


def test_torchrun_cli(tmp_path):
    """The real launcher: `torchrun --nproc_per_node 2 finetune.py ...`."""
    import subprocess

    from yolo.synthetic import make_synthetic_dataset

    data = make_synthetic_dataset(tmp_path / "data", n_train=8, n_val=2, img_size=96, seed=5)
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(TINY_CFG))
    repo = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(_free_port()), str(repo / "finetune.py"), "--cfg", str(tmp_path / "tiny.yaml"), "--data", str(data),
           "--epochs", "1", "--batch-size", "4", "--nbs", "4", "--img", "64", "--device", "cpu", "--workers", "0",
           "--project", str(tmp_path / "runs"), "--noval"]
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"}
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "done: 1 epochs, 2 optimizer steps" in p.stdout
    assert (tmp_path / "runs" / "exp" / "weights" / "last.pt").is_file()
