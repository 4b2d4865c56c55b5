"""How much memory do the loader's workers take when the decoded images are cached (`--cache ram`)?

helmets train split at 320 (or --imgsz), 2 workers, for each way workers can start: fork (Linux's default up to
Python 3.13), forkserver (Linux's default from 3.14) and spawn (macOS, Windows). Each case runs in its own process;
after the first batch it reads the main process's and each worker's memory from /proc/<pid>/smaps_rollup. Pss
charges shared pages to the processes sharing them, so the summed Pss is what the machine pays. Linux only; needs
../shared.

The cache is one buffer (yolo.data.PackedImages) that non-forked workers get through shared memory. Before it
(one numpy array per image, pickled into every spawned worker; measured by hand on 122f291 with the same loader)
each spawned worker held 327-337 MiB private (now ~160) and the three processes 1045 MiB Pss (now ~700).

    python bench/cache_memory.py [--workers 2 --imgsz 320]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from common import markdown_table, need_shared, write_result

METHODS = ("fork", "forkserver", "spawn")


def rollup_mb(pid: int) -> dict[str, float]:
    """Rss, Pss and private (clean + dirty) memory of a process, in MiB."""
    kb: dict[str, int] = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            key, *rest = line.split()
            if key in ("Rss:", "Pss:", "Private_Clean:", "Private_Dirty:"):
                kb[key[:-1]] = int(rest[0])
    return {"rss": kb["Rss"] / 1024, "pss": kb["Pss"] / 1024,
            "private": (kb["Private_Clean"] + kb["Private_Dirty"]) / 1024}  # fmt: skip


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(c) for c in f.read().split()]


def _cmdline(pid: int) -> str:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().replace(b"\0", b" ").decode(errors="replace")


def loader_worker_pids(expected: int) -> list[int]:
    """The loader's worker processes, found in /proc (not through the DataLoader's private state).

    fork and spawn workers are our children; forkserver ones are children of the fork server, itself our child.
    multiprocessing's resource tracker (and the fork server) are helpers, not workers.
    """
    pids = []
    for child in _children(os.getpid()):
        cmd = _cmdline(child)
        if "resource_tracker" in cmd:
            continue
        pids += _children(child) if "forkserver" in cmd else [child]
    if len(pids) != expected:
        raise SystemExit(f"found {len(pids)} loader worker processes, expected {expected}: {pids}")
    return pids


def measure(method: str, data_yaml: Path, imgsz: int, workers: int) -> dict:
    """One case, in this process: a cached loader whose workers start with `method`, after its first batch."""
    import torch

    from yolo.data import create_dataloader, load_data_yaml

    torch.multiprocessing.set_start_method(method)
    cfg = load_data_yaml(data_yaml)
    loader, ds = create_dataloader(cfg.train, imgsz, 16, names=cfg.names, workers=workers, cache="ram")
    it = iter(loader)
    next(it)
    time.sleep(1.0)
    workers_mb = [rollup_mb(pid) for pid in loader_worker_pids(workers)]
    main_mb = rollup_mb(os.getpid())
    total = main_mb["pss"] + sum(w["pss"] for w in workers_mb)
    return {"method": method, "cache_mb": ds.cache_bytes() / 2**20, "main": main_mb, "workers": workers_mb,
            "total_pss": total}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--imgsz", type=int, default=320)
    ap.add_argument("--one", choices=METHODS, help=argparse.SUPPRESS)  # internal: measure one case, print JSON
    args = ap.parse_args()
    data_yaml = need_shared() / "datasets" / "helmets" / "helmets.yaml"
    if args.one:
        print(json.dumps(measure(args.one, data_yaml, args.imgsz, args.workers)))
        return
    rows = []
    for method in METHODS:
        out = subprocess.run([sys.executable, __file__, "--one", method, "--workers", str(args.workers),
                              "--imgsz", str(args.imgsz)], check=True, capture_output=True, text=True)  # fmt: skip
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    md = (
        f"### Memory with `--cache ram`: helmets train at {args.imgsz}, {args.workers} loader workers, after the "
        f"first batch ({rows[0]['cache_mb']:.0f} MiB of decoded images)\n\n"
        + markdown_table(
            ["workers start by", "main Pss (MiB)", "each worker: private (MiB)", "total Pss (MiB)"],
            [[r["method"], f"{r['main']['pss']:.0f}", ", ".join(f"{w['private']:.0f}" for w in r["workers"]),
              f"{r['total_pss']:.0f}"] for r in rows])  # fmt: skip
    )
    write_result("cache_memory", {"workers": args.workers, "imgsz": args.imgsz, "cases": rows}, md)
    print(md)


if __name__ == "__main__":
    main()
