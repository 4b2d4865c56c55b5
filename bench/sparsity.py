"""Does the sparse-training stage do its job? yolov5n trained from scratch on the synthetic demo data with the
demo recipe, with the BN-L1 penalty and without it (same seed, epochs and steps).

Issue target: with --sparsity, at least half of the prunable gammas end below 1e-2 while mAP50 stays within 2
points of the run without it; with --sparsity 0 that fraction stays near 0.

    python bench/sparsity.py [--epochs 50 --sparsity 0.002]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from common import REPO, write_attachment, write_result

from finetune.runs import read_results
from pipeline.cli import DEMO_HYP, demo_model_cfg

HIST_PNG = "sparsity_gamma_hist.png"


def start(tmp: Path, data: Path, cfg: Path, sr: float, epochs: int) -> subprocess.Popen:
    """One training run in its own process (the two runs go side by side, one core each)."""
    cmd = [sys.executable, str(REPO / "finetune.py"), "--cfg", str(cfg), "--data", str(data), "--imgsz", "128",
           "--batch-size", "16", "--nbs", "16", "--epochs", str(epochs), "--workers", "1", "--device", "cpu",
           "--optimizer", "AdamW", "--hyp", str(DEMO_HYP), "--sparsity", str(sr), "--val-every", "5",
           "--project", str(tmp), "--name", f"sr{sr:g}", "--quiet"]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, tmp: Path, sr: float, epochs: int) -> dict:
    _, err = proc.communicate()
    if proc.returncode:
        sys.exit(f"training with --sparsity {sr:g} failed:\n{err[-2000:]}")
    name = f"sr{sr:g}"
    rows = read_results(tmp / name / "results.csv")
    last = rows[-1]
    return {"sparsity": sr, "epochs": epochs, "optimizer_steps": int(float(last["optimizer_steps"])),
            "map50": float(last["metrics/mAP_0.5"]), "map": float(last["metrics/mAP_0.5:0.95"]),
            "gamma_lt_1e-2": float(last["gamma_lt_1e-2"]), "gamma_lt_1e-3": float(last["gamma_lt_1e-3"]),
            "histogram": str(next((tmp / name).glob("gamma*.png"), ""))}


def main() -> None:
    import yaml

    from yolo.synthetic import make_synthetic_dataset

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--epochs", type=int, default=50)
    ap.add_argument("--sparsity", type=float, default=0.002)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        data = make_synthetic_dataset(tmp / "data", n_train=400, n_val=100, img_size=128, seed=0)
        cfg = demo_model_cfg()
        cfg["nc"] = 3
        (tmp / "model.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        procs = [(start(tmp, data, tmp / "model.yaml", sr, args.epochs), sr) for sr in (args.sparsity, 0.0)]
        runs = [finish(proc, tmp, sr, args.epochs) for proc, sr in procs]
        hist = Path(runs[0]["histogram"])
        if hist.is_file():
            write_attachment(hist, HIST_PNG)
            runs[0]["histogram"] = f"bench/results/{HIST_PNG}"
    sparse, dense = runs
    figures = {"runs": runs, "map50_difference": sparse["map50"] - dense["map50"]}
    checks = {
        "with --sparsity, >= 50% of gammas < 1e-2": sparse["gamma_lt_1e-2"] >= 0.5,
        "mAP50 within 2 points of dense": figures["map50_difference"] >= -0.02,
        "without it, < 1% of gammas < 1e-2": dense["gamma_lt_1e-2"] < 0.01,
    }
    figures["checks"] = checks
    md = (
        "### Sparse vs dense training: yolov5n from scratch on the demo data (128 px, AdamW, "
        f"{args.epochs} epochs)\n\n| --sparsity | optimizer steps | share of \\|gamma\\| < 1e-2 | < 1e-3 | mAP50 | "
        "mAP50-95 |\n|---|---|---|---|---|---|\n"
        + "\n".join(f"| {r['sparsity']:g} | {r['optimizer_steps']} | {r['gamma_lt_1e-2']:.1%} | "
                    f"{r['gamma_lt_1e-3']:.1%} | {r['map50']:.3f} | {r['map']:.3f} |" for r in runs)
        + "\n\nChecks: " + ", ".join(f"{k}: {'yes' if v else '**no**'}" for k, v in checks.items())
        + (f"\n\n![gamma histogram per epoch, sparse run]({sparse['histogram']})" if "bench/" in sparse["histogram"]
           else "")
    )
    write_result("sparsity", figures, md)
    print(md)


if __name__ == "__main__":
    main()
