"""Helmets across seeds and recipes: one table from every bench/helmets.py result (bench/results/helmets*.json).

One run says little here: the pruned model's mAP50 moves by ~3 points between seeds, about the issue's whole
2-point margin. This gathers the runs so a recipe is judged on its mean gap and its worst seed.

    python bench/helmets_seeds.py
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
from pathlib import Path

from common import RESULTS, cpu_isa, write_result

NOT_RECIPE = {"--workers": 1, "--project": 1, "--name": 1, "--quiet": 0, "--seed": 1}  # flag -> values it takes
BASE = {("--reconstruct", "128")}  # bench/helmets.py's own default, part of every recipe
BENCH_DEFAULTS = {"--target-flops": "0.5", "--sparse-epochs": "10", "--finetune-epochs": "80", "--sparsity": "0.02",
                  "--sparsity-mode": "targeted", "--sparsity-schedule": "constant", "--nbs": "16"}  # before --threads
FILE_FLAGS = ("--hyp", "--finetune-hyp")  # shown by file name: the same file may sit in different folders


def recipe_of(command: str) -> str:
    """The pipeline flags that make a run's recipe, after the ones every helmets run shares."""
    argv = shlex.split(command)
    cut = argv.index("--threads") if "--threads" in argv else len(argv)
    extra = argv[cut + 2:]
    kept, i = [], 0
    for flag, default in BENCH_DEFAULTS.items():  # bench/helmets.py's own flags, named when not its default
        if flag in argv[:cut] and argv[argv.index(flag) + 1] != default:
            kept += [flag, argv[argv.index(flag) + 1]]
    while i < len(extra):
        skip = NOT_RECIPE.get(extra[i])
        if tuple(extra[i:i + 2]) in BASE:
            i += 2
        elif extra[i] in FILE_FLAGS and i + 1 < len(extra):
            kept += [extra[i], Path(extra[i + 1]).name]
            i += 2
        elif skip is None:
            kept.append(extra[i])
            i += 1
        else:
            i += 1 + skip
    return " ".join(kept)


def seed_of(command: str) -> int:
    argv = shlex.split(command)
    return int(argv[argv.index("--seed") + 1]) if "--seed" in argv else 0


def collect(results: Path = RESULTS) -> list[dict]:
    rows = []
    for path in sorted(results.glob("helmets*.json")):
        doc = json.loads(path.read_text())
        fig = doc.get("figures", {})
        models = fig.get("models", {})
        if "finetuned" not in models or "dense" not in models:
            continue
        cpu = doc["machine"]["cpu"]
        isa = cpu_isa(cpu) or "?"  # unknown, as bench/helmets.py --reference says it; not guessed
        rows.append({"file": path.name, "recipe": recipe_of(fig["command"]) or "(the recipe)",
                     "seed": seed_of(fig["command"]), "host": f"{cpu.get('model')} {isa}",
                     "pruned": models["finetuned"], "unpruned": models["dense"],
                     "gap50": models["dense"]["map50"] - models["finetuned"]["map50"],
                     "gap": models["dense"]["map"] - models["finetuned"]["map"],
                     "unpruned_from": fig.get("reference", {}).get("file", "this run")})
    return sorted(rows, key=lambda r: (r["recipe"] != "(the recipe)", r["recipe"], r["seed"]))


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()  # --help, not a rewrite
    rows = collect()
    by_recipe: dict[str, list[dict]] = {}
    for r in rows:
        by_recipe.setdefault(r["recipe"], []).append(r)
    summary = {k: {"seeds": [r["seed"] for r in v], "mean_gap50": statistics.mean(r["gap50"] for r in v),
                   "worst_gap50": max(r["gap50"] for r in v), "mean_gap": statistics.mean(r["gap"] for r in v)}
               for k, v in by_recipe.items()}
    table = "\n".join(
        f"| {r['recipe']} | {r['seed']} | {r['pruned']['params'] / 1e6:.2f} M | {r['pruned']['map50']:.3f} / "
        f"{r['pruned']['map']:.3f} | {r['unpruned']['map50']:.3f} / {r['unpruned']['map']:.3f} | "
        f"{100 * r['gap50']:.1f} | {100 * r['gap']:.1f} | {r['host']} | {r['file']}"
        + ("" if r["unpruned_from"] == "this run" else f" (unpruned: {r['unpruned_from']})") + " |" for r in rows)
    means = "\n".join(f"| {k} | {', '.join(map(str, s['seeds']))} | {100 * s['mean_gap50']:.1f} | "
                      f"{100 * s['worst_gap50']:.1f} | {100 * s['mean_gap']:.1f} |" for k, s in summary.items())
    md = ("### Helmets across seeds and recipes: pruned (to 0.5x FLOPs unless the recipe says otherwise) vs the "
          "unpruned model, mAP50 / mAP50-95\n\n"
          "Gaps in points (unpruned minus pruned); the issue asks for at most 2 in mAP50. A recipe row repeats the "
          "first one with the flags shown; runs from bench/helmets.py, gathered by bench/helmets_seeds.py.\n\n"
          "| recipe | seed | params | pruned | unpruned | gap mAP50 | gap mAP50-95 | host | result |\n"
          "|---|---|---|---|---|---|---|---|---|\n" + table + "\n\n"
          "| recipe | seeds | mean gap mAP50 | worst gap mAP50 | mean gap mAP50-95 |\n|---|---|---|---|---|\n"
          + means)
    write_result("helmets_seeds", {"runs": rows, "recipes": summary}, md)
    print(md)


if __name__ == "__main__":
    main()
