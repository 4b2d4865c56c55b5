"""The latency tables: one run's (bench/latency.py) and the question's, a row per --round-to, threads, ORT call
and model, collected from the raw run records in bench/results/latency_runs/."""

from __future__ import annotations

from pathlib import Path

from common import RESULTS, markdown_table, read_records, runs_dir, source_of, write_result

QUESTION = "latency"
COMMAND = "python bench/latency.py --collect"  # what rewrites the table, whichever run asked for it
HEADER = ["threads", "ORT call", "model", "GFLOPs", "params", "ONNX MB", "median ms", "p90 ms", "latency ratio",
          "FLOPs ratio", "latency ratio / FLOPs ratio"]
ORT_CALLS = ("ORT call `run`: `session.run` (allocates and copies out the output every call); `io-binding`: input "
             "and output bound once to preallocated buffers, as a deployment loop runs.")


def flat_rows(result: dict) -> list[dict]:
    """One run's figures as rows: per thread setting and ORT call, every model timed."""
    rows = []
    for key, models in result["results"].items():
        for name, r in models.items():
            info = result["models"].get(name, {})
            rows.append({"round_to": result.get("round_to", 8), "threads": r.get("threads", key),
                         "ort_call": "io-binding" if "io-binding" in key else "run", "model": name,
                         "gflops": info.get("gflops", 0), "params": info.get("params", 0),
                         "onnx_mb": info.get("onnx_mb", 0), "median_ms": r["median_ms"], "p90_ms": r["p90_ms"],
                         "latency_ratio": r["ratio_to_baseline"], "flops_ratio": r["gflops_ratio"]})
    return rows


def cells(row: dict) -> list[str]:
    lat, fl = row["latency_ratio"], row["flops_ratio"]
    return [row["threads"], row["ort_call"], row["model"], f"{row['gflops']:.2f}", f"{row['params'] / 1e6:.2f} M",
            f"{row['onnx_mb']:.1f}", f"{row['median_ms']:.1f}", f"{row['p90_ms']:.1f}", f"{lat:.3f}", f"{fl:.3f}",
            f"{lat / fl:.2f}"]


def run_markdown(result: dict) -> str:
    """One run's table (its raw record's .md): median/p90 per model and thread count, latency vs FLOPs ratio."""
    title = f"pruned yolov5n (--round-to {result.get('round_to', 8)}, no fine-tuning) vs baseline"
    return (f"### Deployment latency: {title}, ONNX Runtime CPU, 640x640, interleaved\n\n{ORT_CALLS}\n\n"
            + markdown_table(HEADER, [cells(r) for r in flat_rows(result)]))


def collect(folder: Path) -> tuple[list[dict], list[dict]]:
    """(rows, sources): every run's rows, coarsest --round-to first, and each run record's source."""
    runs = sorted(read_records(folder), key=lambda pd: -pd[1]["figures"].get("round_to", 8))
    rows = [row for _, doc in runs for row in flat_rows(doc["figures"])]
    sources = [{**source_of(path, doc, results=folder.parent), "round_to": doc["figures"].get("round_to", 8)}
               for path, doc in runs]
    return rows, sources


def markdown(rows: list[dict], sources: list[dict]) -> str:
    """The question's table: every run's rows under its --round-to, then each run's command."""
    table = markdown_table(["--round-to", *HEADER], [[r["round_to"], *cells(r)] for r in rows])
    runs = "\n".join(f"- --round-to {s['round_to']}: `{s['command']}`" for s in sources)
    return ("### Deployment latency by --round-to: pruned yolov5n (no fine-tuning) vs baseline, ONNX Runtime CPU, "
            "640x640, interleaved\n\n"
            f"Each --round-to is its own run, the baseline timed again beside its pruned models. {ORT_CALLS}\n\n"
            f"{table}\n\nThe runs (raw records in bench/results/latency_runs/):\n\n{runs}")


def write_table(results: Path = RESULTS) -> tuple[Path, str]:
    """Collect <results>/latency_runs/ into <results>/latency.json and .md; returns the path and the table."""
    rows, sources = collect(runs_dir(QUESTION, results))
    md = markdown(rows, sources)
    return write_result(QUESTION, {"rows": rows, "sources": sources}, md, out_dir=results, command=COMMAND), md
