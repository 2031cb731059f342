"""The asvp-fast command line."""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="asvp-fast", description="Fast active learning for fine-tuning pre-trained models.")
    parser.add_argument("--version", action="store_true", help="print the version and the available back ends")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("bench", help="the acquisition benchmark suite (asvp-fast bench --help)", add_help=False)
    sub.add_parser("backends", help="print what this installation can run on")
    args, rest = parser.parse_known_args(argv)

    if args.version or args.command == "backends":
        import asvp_fast as af

        if args.version:
            print(f"asvp_fast {af.__version__}")
        for key, value in af.backends().items():
            print(f"{key}: {value}")
        return 0
    if args.command == "bench":
        from .benchmarks.acquisition import main as bench_main

        return bench_main(rest)
    parser.print_help()
    return 0 if not argv else 2


if __name__ == "__main__":
    raise SystemExit(main())
