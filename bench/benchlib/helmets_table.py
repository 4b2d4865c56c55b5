"""The helmets table: one row per recipe and seed, collected from the raw run records in helmets_runs/.

One run says little here: the pruned model's mAP50 moves by ~3 points between seeds, about the issue's whole
2-point margin. So a recipe is judged on its mean gap and its worst seed, and on one kind of host at a time when
its runs span two (other kernels train other weights from the same seed).
"""

from __future__ import annotations

import shlex
import statistics
from pathlib import Path

from common import RESULTS, cpu_isa, read_records, runs_dir, source_of, write_result

QUESTION = "helmets"
COMMAND = "python bench/helmets_seeds.py"  # what rewrites the table, whichever script asked for it
THE_RECIPE = "(the recipe)"
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


def row_of(path: Path, doc: dict) -> dict | None:
    """A run record as a table row; None for a run without an unpruned model to compare with."""
    fig = doc.get("figures", {})
    models = fig.get("models", {})
    if "finetuned" not in models or "dense" not in models:
        return None
    cpu = doc["machine"]["cpu"]
    isa = cpu_isa(cpu) or "?"  # unknown, as bench/helmets.py --reference says it; not guessed
    return {"file": path.name, "recipe": recipe_of(fig["command"]) or THE_RECIPE,
            "seed": seed_of(fig["command"]), "host": f"{cpu.get('model')} {isa}",
            "pruned": models["finetuned"], "unpruned": models["dense"],
            "gap50": models["dense"]["map50"] - models["finetuned"]["map50"],
            "gap": models["dense"]["map"] - models["finetuned"]["map"],
            "unpruned_from": fig.get("reference", {}).get("file", "this run")}


def collect(folder: Path | None = None) -> tuple[list[dict], list[dict]]:
    """(rows, sources): every run with a yardstick, the recipe first, then by recipe and seed; and each record's
    file, date, host and command (the runs without a yardstick too: they are records all the same)."""
    folder = runs_dir(QUESTION) if folder is None else Path(folder)
    rows, sources = [], []
    for path, doc in read_records(folder):
        sources.append(source_of(path, doc, results=folder.parent))
        row = row_of(path, doc)
        if row is not None:
            rows.append(row)
    return sorted(rows, key=lambda r: (r["recipe"] != THE_RECIPE, r["recipe"], r["seed"])), sources


def _stats(runs: list[dict]) -> dict:
    return {"seeds": [r["seed"] for r in runs], "mean_gap50": statistics.mean(r["gap50"] for r in runs),
            "worst_gap50": max(r["gap50"] for r in runs), "mean_gap": statistics.mean(r["gap"] for r in runs)}


def summarise(rows: list[dict]) -> dict[str, dict]:
    """Per recipe over all its runs, and per host as well when its runs span more than one kind of CPU."""
    by_recipe: dict[str, list[dict]] = {}
    for r in rows:
        by_recipe.setdefault(r["recipe"], []).append(r)
    summary = {}
    for recipe, runs in by_recipe.items():
        summary[recipe] = _stats(runs)
        hosts = sorted({r["host"] for r in runs})
        for host in hosts if len(hosts) > 1 else ():
            summary[f"{recipe}, {host} only"] = {**_stats([r for r in runs if r["host"] == host]), "host": host}
    return summary


def markdown(rows: list[dict], summary: dict[str, dict]) -> str:
    table = "\n".join(
        f"| {r['recipe']} | {r['seed']} | {r['pruned']['params'] / 1e6:.2f} M | {r['pruned']['map50']:.3f} / "
        f"{r['pruned']['map']:.3f} | {r['unpruned']['map50']:.3f} / {r['unpruned']['map']:.3f} | "
        f"{100 * r['gap50']:.1f} | {100 * r['gap']:.1f} | {r['host']} | {r['file']}"
        + ("" if r["unpruned_from"] == "this run" else f" (unpruned: {r['unpruned_from']})") + " |" for r in rows)
    means = "\n".join(f"| {k} | {', '.join(map(str, s['seeds']))} | {100 * s['mean_gap50']:.1f} | "
                      f"{100 * s['worst_gap50']:.1f} | {100 * s['mean_gap']:.1f} |" for k, s in summary.items())
    return ("### Helmets across seeds and recipes: pruned (to 0.5x FLOPs unless the recipe says otherwise) vs the "
            "unpruned model, mAP50 / mAP50-95\n\n"
            "Gaps in points (unpruned minus pruned); the aim is at most 2 in mAP50. A recipe row repeats "
            "the first one with the flags shown; runs from bench/helmets.py (each run's record, with its command, "
            "stage times, checks and bootstrap interval, is the result file in bench/results/helmets_runs/), "
            "gathered by bench/helmets_seeds.py.\n\n"
            "| recipe | seed | params | pruned | unpruned | gap mAP50 | gap mAP50-95 | host | result |\n"
            "|---|---|---|---|---|---|---|---|---|\n" + table + "\n\n"
            "| recipe | seeds | mean gap mAP50 | worst gap mAP50 | mean gap mAP50-95 |\n|---|---|---|---|---|\n"
            + means)


def write_table(results: Path = RESULTS) -> tuple[Path, str]:
    """Collect <results>/helmets_runs/ into <results>/helmets.json and .md; returns the path and the table."""
    rows, sources = collect(runs_dir(QUESTION, results))
    summary = summarise(rows)
    md = markdown(rows, summary)
    figures = {"runs": rows, "recipes": summary, "sources": sources}
    return write_result(QUESTION, figures, md, out_dir=results, command=COMMAND), md
