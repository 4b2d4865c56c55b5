"""Regenerate the README's results section from bench/results/*.md (written by the benchmark scripts).

    python bench/readme.py
"""

from __future__ import annotations

import argparse
import json

from common import REPO, RESULTS, cpu_isa
from helmets_seeds import collect

START, END = "<!-- results:start -->", "<!-- results:end -->"
ORDER = ("val_parity", "demo", "prune_speed", "prune_quality", "prune_importance", "latency", "latency_round8",
         "latency_round1", "int8", "train_throughput", "data_throughput", "cache_memory", "finetune_parity",
         "families", "helmets_seeds", "helmets_sizes", "helmets", "recovery")
LINKED = "helmets_"  # per-run helmets records: the seeds table above sums them up; the README links each one


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()  # --help, not a rewrite
    readme = REPO / "README.md"
    text = readme.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"{readme}: markers {START} / {END} not found")
    names = sorted(p.stem for p in RESULTS.glob("*.md"))
    linked = [n for n in names if n.startswith(LINKED) and n not in ORDER]
    names = [n for n in ORDER if n in names] + [n for n in names if n not in ORDER and n not in linked]
    body = "\n\n".join(f"{(RESULTS / f'{n}.md').read_text().strip()}\n\n{host_line(n)}" for n in names)
    if linked:
        body += "\n\n" + linked_runs(linked)
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{START}\n{body}\n{END}{tail}")
    print(f"README results section: {len(names)} tables ({', '.join(names)}), {len(linked)} linked")


def linked_runs(names: list[str]) -> str:
    """One line per helmets run that is not pasted: seed, recipe, host and the link to its own table."""
    rows = {r["file"]: r for r in collect()}
    lines = []
    for n in names:
        r = rows.get(f"{n}.json")
        what = f"seed {r['seed']}, {r['recipe']}, {r['host']}" if r else "(no comparison with an unpruned model)"
        lines.append(f"- [`{n}`](bench/results/{n}.md): {what}")
    return ("### Every helmets run\n\nEach record has its command, stage times, checks and bootstrap interval; "
            "the seeds table above sums them up.\n\n" + "\n".join(lines))


def host_line(name: str) -> str:
    """Which CPU a table was measured on: the VMs differ (AVX2 / AVX-512 kernels round and time differently)."""
    path = RESULTS / f"{name}.json"
    if not path.exists():
        return "_Host: not recorded._"
    doc = json.loads(path.read_text())
    cpu = doc.get("machine", {}).get("cpu", {})
    if isinstance(cpu, str):  # older records: the model name only
        cpu = {"model": cpu, "logical_cores": doc["machine"].get("logical_cores")}
    isa = cpu_isa(cpu)
    parts = [cpu.get("model") or "unknown CPU"]
    if isa:
        parts[0] += f" ({isa})"
    if cpu.get("logical_cores"):
        parts.append(f"{cpu['logical_cores']} cores")
    date = str(doc.get("date", ""))[:10]
    return f"_Host: {', '.join(parts)}" + (f"; {date}" if date else "") + "._"


if __name__ == "__main__":
    main()
