"""Regenerate the README's results section from bench/results/*.md (written by the benchmark scripts).

    python bench/readme.py
"""

from __future__ import annotations

from common import REPO, RESULTS

START, END = "<!-- results:start -->", "<!-- results:end -->"
ORDER = ("val_parity", "demo", "prune_speed", "prune_quality", "prune_importance", "latency", "latency_round8",
         "latency_round1", "int8", "train_throughput", "data_throughput", "cache_memory", "finetune_parity", "families",
         "helmets", "helmets_seed1", "helmets_seed2", "recovery")


def main() -> None:
    readme = REPO / "README.md"
    text = readme.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"{readme}: markers {START} / {END} not found")
    names = sorted(p.stem for p in RESULTS.glob("*.md"))
    names = [n for n in ORDER if n in names] + [n for n in names if n not in ORDER]
    body = "\n\n".join((RESULTS / f"{n}.md").read_text().strip() for n in names)
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{START}\n{body}\n{END}{tail}")
    print(f"README results section: {len(names)} tables ({', '.join(names)})")


if __name__ == "__main__":
    main()
