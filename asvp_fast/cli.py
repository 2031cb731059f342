"""The asvp-fast command line."""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional


def main(argv: Optional[List[str]] = None) -> int:
    """The ``asvp-fast`` entry point; a closed output pipe (``asvp-fast backends | head -1``) ends it
    quietly, as command-line tools do."""
    try:
        return _main(argv)
    except BrokenPipeError:
        # Python would report the failed flush of stdout at exit: point stdout at devnull first.
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a program stopped by a closed pipe


def _main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="asvp-fast", description="Fast active learning for fine-tuning pre-trained models.")
    parser.add_argument("--version", action="store_true", help="print the version and the available back ends")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("bench", help="the benchmark suite, from a source checkout (asvp-fast bench --help)", add_help=False)
    sub.add_parser("backends", help="print what this installation can run on")
    run_p = sub.add_parser("run", help="a configured active-learning run (TOML or YAML), resumable")
    run_p.add_argument("config", help="the run configuration (.toml, .yaml)")
    run_p.add_argument("--output", "-o", help="run directory (default: runs/<config name>)")
    run_p.add_argument("--resume", action="store_true", help="continue the run in the output directory")
    run_p.add_argument("--no-progress", action="store_true", help="no progress bars")
    study_p = sub.add_parser("study", help="one run per seed, then mean ± std across seeds (resumable)")
    study_p.add_argument("config", help="the run configuration (.toml, .yaml); its seed is replaced by each of --seeds")
    study_p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (default: 0 1 2)")
    study_p.add_argument("--output", "-o", help="study directory, one run per seed in it (default: runs/<config name>-study)")
    study_p.add_argument("--title", default="", help="title of the accuracy plot")
    study_p.add_argument("--no-progress", action="store_true", help="no progress bars")
    demo_p = sub.add_parser("demo", help="random vs SVPp vs standard AL vs ASVP on built-in real data (WordNet + MiniLM)")
    demo_p.add_argument("--output", "-o", default="asvp-fast-demo", help="run directory (default: ./asvp-fast-demo)")
    demo_p.add_argument("--fresh", action="store_true", help="start over instead of continuing an earlier demo run")
    demo_p.add_argument("--no-progress", action="store_true", help="no progress bars")
    args, rest = parser.parse_known_args(argv)

    if args.version or args.command == "backends":
        import asvp_fast as af

        if args.version:
            print(f"asvp_fast {af.__version__}")
        for key, value in af.backends().items():
            print(f"{key}: {value}")
        return 0
    if args.command == "bench":
        return _bench(rest)
    if rest:
        parser.error(f"unrecognised arguments: {' '.join(rest)}")
    if args.command == "run":
        from pathlib import Path

        config = Path(args.config)
        output = Path(args.output) if args.output else Path("runs") / config.stem
        return _run_loop(lambda: _load(config), output, resume=args.resume, progress=False if args.no_progress else None,
                         source=config)
    if args.command == "study":
        from pathlib import Path

        config = Path(args.config)
        output = Path(args.output) if args.output else Path("runs") / f"{config.stem}-study"
        command = "asvp-fast " + " ".join(argv)
        return _run_loop(lambda: _load(config), output, resume=True, progress=False if args.no_progress else None,
                         source=config, seeds=args.seeds, command=command, title=args.title)
    if args.command == "demo":
        return _demo(args)
    parser.print_help()
    return 0 if not argv else 2


def _bench_entry() -> "Optional[object]":
    """bench/run.py of a source checkout: beside the package's folder (an in-tree or editable
    install), else in the working directory. The benchmark is not part of the wheel."""
    from pathlib import Path

    for folder in (Path(__file__).resolve().parent.parent / "bench", Path.cwd() / "bench"):
        entry = folder / "run.py"
        try:
            if entry.is_file() and 'BENCH_OF = "asvp_fast"' in entry.read_text(encoding="utf-8"):
                return entry
        except OSError:
            continue
    return None


def _bench(argv: List[str]) -> int:
    import importlib.util

    entry = _bench_entry()
    if entry is None:
        print("asvp-fast bench: the benchmark is not part of the installed package; it lives in the bench/ folder "
              "of the source repository. Clone the asvp_fast repository, install it from there "
              "(pip install '.[bench]') and run `asvp-fast bench` (or `python bench/run.py`) from the repository root.",
              file=sys.stderr)
        return 2
    spec = importlib.util.spec_from_file_location("asvp_fast_bench_run", str(entry))
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[spec.name] = module  # type: ignore[union-attr]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return int(module.main(argv))  # type: ignore[attr-defined]


def _load(path: "object") -> "object":
    from .loop.engine.config import load_config

    return load_config(path)  # type: ignore[arg-type]


def _run_loop(get_config: "object", output: "object", *, resume: bool, progress: Optional[bool],
              source: "object" = None, seeds: Optional[List[int]] = None, command: str = "", title: str = "") -> int:
    """Run the loop (one run, or one per seed with ``seeds``) with the CLI's error handling:
    messages, not tracebacks, for the user's mistakes."""
    import time
    from pathlib import Path

    try:
        from .loop.api import run, run_seeds
        from .loop.engine.config import ConfigError
        from .loop.engine.oracle import LabelsPending, OracleError
        from .loop.engine.state import StateError
        from .loop.models.trainers import TrainingDiverged
        from .loop.reporting import study
        from .loop.storage.cache import CacheError
    except ImportError as exc:
        print(f"asvp-fast: the active-learning loop needs PyTorch and the demo models: pip install 'asvp-fast[demo]' ({exc})",
              file=sys.stderr)
        return 2
    from .loop.engine.distributed import process_group_from_env
    from .loop.models.ranks import is_root

    out = Path(str(output))
    start = time.perf_counter()
    root = True
    try:
        config = get_config()  # type: ignore[operator]
        # under torchrun: one process group for the whole run (None on one process)
        with process_group_from_env() as group:
            root = is_root(group)
            if seeds is None:
                run(config, out, resume=resume, progress=progress, group=group)
            else:
                states = run_seeds(config, seeds, out, progress=progress, group=group)  # type: ignore[arg-type]
                if root:
                    written = study.write_summary(study.collect(config, states), config, out, command=command,  # type: ignore[arg-type]
                                                  title=title, traces=study.traces(config, states, out))  # type: ignore[arg-type]
                    print(written["markdown"])
    except LabelsPending as exc:
        print(f"asvp-fast: {exc}", file=sys.stderr)
        return 3
    except (ConfigError, StateError, CacheError, OracleError, TrainingDiverged) as exc:
        print(f"asvp-fast: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nasvp-fast: interrupted; everything acquired so far is saved in {out}. "
              "Continue with the same command and --resume.", file=sys.stderr)
        return 130
    except ValueError as exc:  # run_seeds' argument checks
        if seeds is None:
            raise
        print(f"asvp-fast: {exc}", file=sys.stderr)
        return 2
    finally:
        if root:
            _keep_config_copy(source, out)
    if root:
        print(f"run directory: {out} (wall time {time.perf_counter() - start:.0f} s)")
    return 0


def _keep_config_copy(source: "object", out: "object") -> None:
    """A copy of the user's config file beside the run, once the run exists: the CLI never creates
    the run directory itself, so a config rejected before any work leaves nothing behind."""
    import shutil
    from pathlib import Path

    if source is None:
        return
    run_dir = Path(str(out))
    target = run_dir / ("config" + Path(str(source)).suffix)
    made = (run_dir / "state.json").exists() or any(run_dir.glob("seed*/state.json"))
    if made and not target.exists():
        shutil.copyfile(str(source), target)


def _demo(args: "argparse.Namespace") -> int:
    import shutil
    from importlib import resources
    from pathlib import Path

    out = Path(args.output)
    if args.fresh and out.exists():
        if not _is_run_dir(out):
            print(f"asvp-fast: --fresh deletes the demo's run directory, and {out} is not one (no state.json and "
                  f"config.json); choose another --output or remove it yourself", file=sys.stderr)
            return 2
        shutil.rmtree(out)
    text = resources.files("asvp_fast").joinpath("configs/demo.toml").read_text(encoding="utf-8")

    def get_config() -> object:
        from .loop.engine.config import parse_config, parse_toml

        return parse_config(parse_toml(text, "the demo config"))

    print(f"asvp-fast demo: random vs SVPp vs standard AL vs ASVP, margin sampling, WordNet noun glosses + all-MiniLM-L6-v2 "
          f"(2 CPU cores: about 8 minutes); results in {out}/")
    return _run_loop(get_config, out, resume=(out / "state.json").exists(), progress=False if args.no_progress else None)


def _is_run_dir(path: "object") -> bool:
    """A directory a run wrote: its state and config files are there, and nothing else is a surprise."""
    from pathlib import Path

    p = Path(str(path))
    if not p.is_dir() or p.is_symlink():
        return False
    return (p / "state.json").is_file() and (p / "config.json").is_file()


if __name__ == "__main__":
    raise SystemExit(main())
