"""Render docs/results.md (every table in bench/results/) and the README's key-results block from the records.

docs/results.md is written whole; in README.md only the text between `<!-- results:start -->` and
`<!-- results:end -->` is replaced (at most 200 words: the demo's headline figures and the helmets summary).
Nothing is measured: the figures are the records' own.

    python bench/readme.py                 # rewrite docs/results.md and the README block
    python bench/readme.py --check         # exit 1 if either differs from what the records give; writes nothing
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchlib import readme_block, results_doc
from common import REPO, RESULTS


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=RESULTS, help="the records (default bench/results)")
    ap.add_argument("--docs", type=Path, default=REPO / "docs" / "results.md", help="the tables' page")
    ap.add_argument("--readme", type=Path, default=REPO / "README.md", help="the README holding the markers")
    ap.add_argument("--check", action="store_true", help="compare instead of writing (exit 1 when stale)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from yolo.fileio import atomic_write_text

    args = parse_args(argv)
    if not args.readme.is_file():
        sys.exit(f"--readme {args.readme}: no such file")
    block = readme_block.render(args.results)
    if readme_block.word_count(block) > readme_block.MAX_WORDS:
        sys.exit(f"the README block is {readme_block.word_count(block)} words, over {readme_block.MAX_WORDS}")
    wanted = {args.docs: results_doc.render(args.results),
              args.readme: readme_block.replace_block(args.readme.read_text(), block, str(args.readme))}
    stale = [p for p, text in wanted.items() if not p.is_file() or p.read_text() != text]
    if args.check:
        print("\n".join(f"{p}: not what bench/results/ gives (run python bench/readme.py)" for p in stale)
              or "docs/results.md and the README block match bench/results/")
        return 1 if stale else 0
    for path in stale:
        atomic_write_text(path, wanted[path])
    names = results_doc.table_names(args.results)
    print(f"{args.docs}: {len(names)} tables ({', '.join(names)}); {args.readme}: results block "
          f"{readme_block.word_count(block)} words" + ("" if stale else " (both unchanged)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
