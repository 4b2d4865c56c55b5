"""Which object sizes the helmets cut costs: COCO mAP50-95 of small / medium / large objects per model.

The pruned and unpruned models of bench/helmets.py runs (their best.pt), scored on the helmets val split at 320 px
with `yolo.val.evaluate`, whose metrics carry `map_by_size`. Helmets has no large objects (null).

    python bench/helmets_sizes.py LABEL=path/to/best.pt [LABEL=path/to/best.pt ...]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common import need_shared, write_result


def score(weights: Path, data_yaml: Path) -> dict:
    from yolo.checkpoint import load_model
    from yolo.data import load_data_yaml
    from yolo.val import evaluate

    model, _ = load_model(weights)
    res = evaluate(model, load_data_yaml(data_yaml), imgsz=320, device="cpu", workers=0, progress=False)
    return {"weights": str(weights), "map50": res["map50"], "map": res["map"], **res["map_by_size"]}


def _cell(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", metavar="LABEL=WEIGHTS", help="a row label and a best.pt")
    args = ap.parse_args()
    data_yaml = need_shared() / "datasets" / "helmets" / "helmets.yaml"
    rows = {}
    for item in args.models:
        label, sep, path = item.partition("=")
        if not sep or not Path(path).is_file():
            ap.error(f"{item}: expected LABEL=path/to/best.pt of an existing file")
        rows[label] = score(Path(path), data_yaml)
    table = "\n".join(f"| {k} | {r['map50']:.3f} | {r['map']:.3f} | {_cell(r['small'])} | {_cell(r['medium'])} | "
                      f"{_cell(r['large'])} |" for k, r in rows.items())
    md = ("### Helmets by object size: COCO mAP50-95 of small (< 32^2 px), medium and large (>= 96^2 px) objects\n\n"
          "best.pt of each run, val split at 320 px; '-' where the split has no objects of that size.\n\n"
          "| model | mAP50 | mAP50-95 | small | medium | large |\n|---|---|---|---|---|---|\n" + table)
    write_result("helmets_sizes", {"models": rows}, md)
    print(md)


if __name__ == "__main__":
    main()
