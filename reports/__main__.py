"""Command line: ``python -m reports render BENCH.json [MORE.json ...] --out DIR``.

Exit codes: 0 done; 2 unusable input (missing, corrupt or empty benchmark files).
"""

from __future__ import annotations

import argparse
import sys

from reports.load import ReportInputError
from reports.render import render


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reports", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("render", help="markdown + figures + CSV from benchmark JSON files")
    p.add_argument("files", nargs="+", help="pytest-benchmark JSON files (several merge)")
    p.add_argument("--out", required=True, help="folder to write the report into")
    args = parser.parse_args(argv)
    try:
        if args.command == "render":
            render(args.files, args.out)
    except ReportInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
