"""What a user sees on bad input: each case run as a real command, with the one line it prints, its exit code and
what it leaves on disk (nothing half-written, no empty run folder, the input files unchanged).

    python bench/bad_input.py            # bench/results/bad_input.json / .md (the table in docs/results.md)
    python bench/bad_input.py --out DIR  # write the table elsewhere (tests)

Every case runs in a folder of its own (its working directory, so default `runs/...` folders land there); the
inputs (a tiny yolov5n checkpoint, a synthetic dataset, a dataset with broken labels and images, a hostile
pickle) live in a separate folder whose files are hashed before and after every case.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import pickle
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from common import REPO, markdown_table, write_result

from yolo.checkpoint import save_checkpoint
from yolo.model import build_model
from yolo.synthetic import SYNTH_NAMES, make_synthetic_dataset

PY = sys.executable
TIMEOUT_S = 600


@dataclass
class Case:
    """One bad input: what it is, the command (paths relative to the inputs folder) and what should hold."""

    what: str
    argv: list[str]
    expect_rc: int


@dataclass
class Outcome:
    case: Case
    rc: int
    line: str
    left: list[str]
    inputs_unchanged: bool


def make_inputs(root: Path) -> None:
    """A tiny checkpoint of the synthetic classes, good and broken datasets, a hostile pickle, a plain state_dict."""
    good = make_synthetic_dataset(root / "good", n_train=8, n_val=4, img_size=64)
    model = build_model("yolov5n", nc=len(SYNTH_NAMES))
    model.names = list(SYNTH_NAMES)
    save_checkpoint(root / "tiny.pt", model.eval(), {"imgsz": 64, "names": list(SYNTH_NAMES)})
    _broken_dataset(root / "bad")
    renamed = yaml.safe_load(good.read_text())
    renamed["names"] = {0: "ring", 1: "box", 2: "wedge"}
    renamed["path"] = str(root / "good")
    (root / "renamed.yaml").write_text(yaml.safe_dump(renamed, sort_keys=False))
    (root / "hostile.pt").write_bytes(pickle.dumps(_Hostile(str(root / "PWNED"))))
    torch.save({"weight": torch.zeros(3)}, root / "state_dict.pt")
    imgs = root / "images"
    imgs.mkdir()
    for p in sorted((root / "good" / "images" / "val").iterdir())[:2]:
        (imgs / p.name).write_bytes(p.read_bytes())
    (imgs / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")


def _broken_dataset(root: Path) -> None:
    """The synthetic data with a 4-column row, a class out of range, negative coordinates, a cut JPEG, a .txt."""
    make_synthetic_dataset(root, n_train=8, n_val=4, img_size=64)
    labels = sorted((root / "labels" / "val").glob("*.txt"))
    labels[0].write_text(labels[0].read_text() + "1 0.5 0.5 0.2\n")
    labels[1].write_text(labels[1].read_text() + "7 0.5 0.5 0.2 0.2\n")
    labels[2].write_text(labels[2].read_text() + "0 -0.4 0.5 0.2 0.2\n")
    (root / "images" / "val" / "zz_corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut short")
    (root / "images" / "val" / "notes.txt").write_text("not an image\n")


class _Hostile:
    """A pickle that would run a shell command if a loader unpickled it blindly."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def cases() -> list[Case]:
    """The bad inputs, one per row; {in} is the inputs folder."""
    w, good, bad = "{in}/tiny.pt", "{in}/good/data.yaml", "{in}/bad/data.yaml"
    prune, ft = [PY, str(REPO / "prune.py")], [PY, str(REPO / "finetune.py")]
    return [
        Case("missing weights", [*prune, "val", "--weights", "{in}/nope.pt", "--data", good], 2),
        Case("missing data.yaml", [*prune, "val", "--weights", w, "--data", "{in}/nope.yaml"], 2),
        Case("bad label rows, cut JPEG, .txt in images/", [*prune, "val", "--weights", w, "--data", bad,
                                                          "--imgsz", "64"], 0),
        Case("the same, --strict", [*prune, "val", "--weights", w, "--data", bad, "--imgsz", "64", "--strict"], 2),
        Case("unwritable --save-json", [*prune, "val", "--weights", w, "--data", good, "--imgsz", "64",
                                        "--save-json", "/proc/x/p.json"], 2),
        Case("same class count, other names", [*prune, "val", "--weights", w, "--data", "{in}/renamed.yaml",
                                               "--imgsz", "64"], 0),
        Case("hostile pickle as weights", [*ft, "--weights", "{in}/hostile.pt", "--data", good, "--epochs", "1"], 2),
        Case("--resume on a file that is no run", [*ft, "--resume", "{in}/state_dict.pt"], 2),
        Case("unwritable --project (training)", [*ft, "--weights", w, "--data", good, "--imgsz", "64",
                                                 "--epochs", "1", "--project", "/proc/x"], 2),
        Case("broken data, training --strict", [*ft, "--weights", w, "--data", bad, "--imgsz", "64",
                                                "--epochs", "1", "--strict"], 2),
        Case("--ratio out of range", [*prune, "prune", "--weights", w, "--ratio", "1.2"], 2),
        Case("unwritable sweep --project", [*prune, "sweep", "--weights", w, "--project", "/proc/x"], 2),
        Case("export size not a stride multiple", [*prune, "export", "--weights", w, "--imgsz", "650"], 2),
        Case("export --int8 with a missing --calib-data", [*prune, "export", "--weights", w, "--imgsz", "64",
                                                           "--int8", "--calib-data", "{in}/nope.yaml"], 2),
        Case("detect size not a stride multiple", [*prune, "detect", "--weights", w, "--source", "{in}/images",
                                                   "--imgsz", "650"], 2),
        Case("detect on a folder with a corrupt image", [*prune, "detect", "--weights", w, "--source",
                                                         "{in}/images", "--imgsz", "64"], 0),
        Case("unwritable benchmark --json", [*prune, "benchmark", w, "--imgsz", "64",
                                             "--json", "/proc/x/b.json"], 2),
        Case("report with a missing --data", [*prune, "report", "--baseline", w, "--data", "{in}/nope.yaml",
                                              "--imgsz", "64"], 2),
        Case("pipeline --target-flops out of range", [*prune, "pipeline", "--weights", w, "--data", good,
                                                      "--target-flops", "1.5"], 2),
        Case("pipeline on broken data, --strict", [*prune, "pipeline", "--weights", w, "--data", bad,
                                                   "--imgsz", "64", "--strict"], 2),
    ]


def run_case(case: Case, inputs: Path, work: Path) -> Outcome:
    """Run one case in an empty folder; the line shown is the first error/warning line (else the last line)."""
    work.mkdir(parents=True)
    before = _hashes(inputs)
    argv = [a.replace("{in}", str(inputs)) for a in case.argv]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    lines = [ln.strip() for ln in (proc.stderr + "\n" + proc.stdout).splitlines() if ln.strip()]
    shown = next((ln for ln in lines if ln.lower().startswith(("error", "warning"))), lines[-1] if lines else "")
    left = sorted(str(p.relative_to(work)) for p in work.rglob("*"))
    unchanged = _hashes(inputs) == before and not (inputs / "PWNED").exists()
    return Outcome(case, proc.returncode, shown.replace(str(inputs), "<in>"), left, unchanged)


def _hashes(folder: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def _left_text(left: list[str]) -> str:
    if not left:
        return "nothing"
    tops = sorted({p.split("/")[0] for p in left})
    return f"{len(left)} paths under {', '.join(tops)}"


def table(outcomes: list[Outcome]) -> str:
    rows = [[o.case.what, f"`{_short(o.case.argv)}`", f"`{o.line[:160]}`", o.rc,
             _left_text(o.left), "yes" if o.inputs_unchanged else "**NO**",
             "yes" if o.rc == o.case.expect_rc else "**NO**"] for o in outcomes]
    head = ["input", "command", "what the user sees", "exit", "left on disk", "inputs unchanged", "as expected"]
    return ("### Bad input: what each command says (run by bench/bad_input.py)\n\n"
            "Each case ran as a real command in an empty folder; 'left on disk' is everything it created there.\n\n"
            + markdown_table(head, rows))


def _short(argv: list[str]) -> str:
    words = [Path(a).name if a.endswith((".py",)) else a for a in argv[1:]]
    return " ".join(w.replace("{in}/", "") for w in words)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None, help="results folder (default bench/results)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bad-input-") as tmp:
        inputs = Path(tmp) / "in"
        inputs.mkdir()
        make_inputs(inputs)
        outcomes = []
        for i, case in enumerate(cases()):
            o = run_case(case, inputs, Path(tmp) / f"case{i:02d}")
            print(f"{case.what}: exit {o.rc}, {_left_text(o.left)}: {o.line}", flush=True)
            outcomes.append(o)
    figures = {"cases": [{"input": o.case.what, "argv": o.case.argv, "exit": o.rc, "expected_exit": o.case.expect_rc,
                          "line": o.line, "left": o.left, "inputs_unchanged": o.inputs_unchanged} for o in outcomes]}
    write_result("bad_input", figures, table(outcomes), out_dir=args.out)
    bad = [o.case.what for o in outcomes if o.rc != o.case.expect_rc or not o.inputs_unchanged]
    if bad:
        sys.exit(f"not as expected: {'; '.join(bad)}")


if __name__ == "__main__":
    main()
