"""Helmets across seeds and recipes: the one helmets table, bench/results/helmets.json (+ .md), with a row per
recipe and seed, collected from the raw records bench/helmets.py leaves in bench/results/helmets_runs/.

Nothing is trained or scored here: the table is re-rendered from the records (bench/helmets.py re-collects it
after each run as well).

    python bench/helmets_seeds.py
"""

from __future__ import annotations

import argparse

from benchlib.helmets_table import write_table


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()  # --help, not a rewrite
    path, md = write_table()
    print(md)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
