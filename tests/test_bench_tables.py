"""The collected tables and the pages made from bench/results/: the helmets summary per host, the latency table
by --round-to from its run records, and bench/readme.py's docs/results.md and README block."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"


@pytest.fixture(autouse=True)
def bench_on_path(monkeypatch):
    monkeypatch.setattr(sys, "path", [*sys.path, str(REPO / "bench")])  # appended: bench/sparsity.py must not shadow


def _row(recipe: str, seed: int, host: str, gap50: float) -> dict:
    return {"recipe": recipe, "seed": seed, "host": host, "gap50": gap50, "gap": gap50 / 2}


def test_helmets_summary_adds_a_row_per_host_only_when_a_recipe_spans_two():
    from benchlib.helmets_table import summarise

    rows = [_row("(the recipe)", 0, "CPU AVX2", 0.02), _row("(the recipe)", 0, "CPU AVX-512", 0.04),
            _row("(the recipe)", 1, "CPU AVX-512", 0.06), _row("--target-flops 0.7", 0, "CPU AVX-512", 0.01)]
    summary = summarise(rows)
    assert list(summary) == ["(the recipe)", "(the recipe), CPU AVX-512 only", "(the recipe), CPU AVX2 only",
                             "--target-flops 0.7"]
    assert summary["(the recipe)"]["mean_gap50"] == pytest.approx(0.04)
    assert summary["(the recipe), CPU AVX-512 only"]["seeds"] == [0, 1]
    assert summary["(the recipe), CPU AVX-512 only"]["mean_gap50"] == pytest.approx(0.05)


def _latency_record(path: Path, round_to: int, median: float) -> None:
    timing = {"baseline": {"median_ms": 40.0, "p90_ms": 41.0, "threads": 1, "ratio_to_baseline": 1.0,
                           "gflops_ratio": 1.0},
              "flops-0.5": {"median_ms": median, "p90_ms": median + 1, "threads": 1,
                            "ratio_to_baseline": median / 40.0, "gflops_ratio": 0.5}}
    models = {"baseline": {"gflops": 4.47, "params": 1.87e6, "onnx_mb": 7.6},
              "flops-0.5": {"gflops": 2.22, "params": 0.8e6, "onnx_mb": 3.3}}
    doc = {"name": path.stem, "command": f"python bench/latency.py --round-to {round_to}", "date": "2026-11-23",
           "machine": {"cpu": {"model": "CPU", "flags": ["avx2"], "logical_cores": 2}},
           "figures": {"round_to": round_to, "models": models, "results": {"1": timing}}}
    path.write_text(json.dumps(doc))


def test_latency_table_has_a_row_per_round_to_and_model_from_the_run_records(tmp_path):
    from benchlib.latency_table import collect, markdown, run_markdown

    runs = tmp_path / "latency_runs"
    runs.mkdir()
    _latency_record(runs / "latency_round8.json", 8, 28.0)
    _latency_record(runs / "latency_round16.json", 16, 25.0)
    rows, sources = collect(runs)
    assert [(r["round_to"], r["model"]) for r in rows] == [(16, "baseline"), (16, "flops-0.5"), (8, "baseline"),
                                                          (8, "flops-0.5")]
    assert [s["file"] for s in sources] == ["latency_runs/latency_round16.json", "latency_runs/latency_round8.json"]
    md = markdown(rows, sources)
    assert "| 16 | 1 | run | flops-0.5 | 2.22 | 0.80 M | 3.3 | 25.0 | 26.0 | 0.625 | 0.500 | 1.25 |" in md
    assert "- --round-to 8: `python bench/latency.py --round-to 8`" in md
    doc = json.loads((runs / "latency_round8.json").read_text())
    assert run_markdown(doc["figures"]).splitlines()[-1] == \
        "| 1 | run | flops-0.5 | 2.22 | 0.80 M | 3.3 | 28.0 | 29.0 | 0.700 | 0.500 | 1.40 |"


def _readme(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "README.md"
    path.write_text(text)
    return path


def test_readme_renders_every_table_and_a_short_block_and_checks_it(tmp_path):
    import readme
    from benchlib.readme_block import END, START

    page = _readme(tmp_path, f"# Title\n\nKept above.\n\n{START}\nold block\n{END}\n\nKept below.\n")
    docs = tmp_path / "docs" / "results.md"
    argv = ["--docs", str(docs), "--readme", str(page)]
    assert readme.main(argv) == 0
    text = docs.read_text()
    tables = sorted(RESULTS.glob("*.md"))
    assert {"helmets.md", "latency.md", "recovery.md", "demo.md"} <= {p.name for p in tables}
    for table in tables:  # each question's table whole, links made relative to docs/
        assert table.read_text().strip().replace("](bench/", "](../bench/") in text, table.name
    assert text.count("_Host") == len(tables)  # a host line under each
    assert "../bench/results/helmets_runs/helmets_seed1.md" in text  # the raw records linked
    head, rest = page.read_text().split(START)
    block, tail = rest.split(END)
    assert head == "# Title\n\nKept above.\n\n" and tail == "\n\nKept below.\n"
    assert len(block.split()) < 200 and "[docs/results.md](docs/results.md)" in block
    assert "Helmets" in block and "0.7x" in block and "Demo" in block
    assert readme.main([*argv, "--check"]) == 0
    docs.write_text(text.replace("| 0.962 |", "| 0.999 |"))
    before = page.read_text()
    assert readme.main([*argv, "--check"]) == 1  # stale, said, and not rewritten
    assert "| 0.999 |" in docs.read_text() and page.read_text() == before


def test_readme_without_the_markers_stops_with_one_line(tmp_path):
    import readme

    page = _readme(tmp_path, "# A README without a results block\n")
    with pytest.raises(SystemExit) as err:
        readme.main(["--docs", str(tmp_path / "results.md"), "--readme", str(page)])
    assert "markers" in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "results.md").exists() and page.read_text() == "# A README without a results block\n"


def test_committed_docs_and_readme_block_are_what_the_records_give():
    import readme

    assert readme.main(["--check"]) == 0, "run python bench/readme.py"
