"""The README's quick start runs, the CLI answers, and the benchmark machinery works on tiny sizes."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest

from asvp_fast import cli

# bench/ is on pytest's path (pyproject.toml): the benchmark harness and its suites.
import run as bench
import uncertainty as ubench

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def test_readme_quick_start_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "the README has no Python example"
    namespace: dict = {}  # the examples read as one session: later blocks use earlier names
    for code in blocks:
        exec(compile(code, str(README), "exec"), namespace)


def test_cli_backends(capsys):
    assert cli.main(["backends"]) == 0
    out = capsys.readouterr().out
    assert "cuda_compiled:" in out and "openmp_threads:" in out


def test_cli_unknown_command_fails():
    with pytest.raises(SystemExit):
        cli.main(["no-such-command"])


@pytest.mark.parametrize("kind,dtype,logits", [("margin", "float32", False), ("entropy", "float16", True)])
def test_benchmark_case_runs_and_agrees(kind, dtype, logits):
    pytest.importorskip("psutil")
    case = ubench.Case("tiny", 3000, 40, dtype, logits, kind, 50)
    rows = ubench.run_case(case, threads=0, bandwidth=1e10, repeat=1, with_torch=False)
    assert [r.method for r in rows] == ["asvp_fast", "numpy-sort"]
    assert rows[1].agrees == "100.0%"
    ours, ref = rows
    nbytes = 3000 * 40 * np.dtype(dtype).itemsize
    for r in rows:  # every derived column comes from the row's own timing
        assert math.isfinite(r.seconds) and r.seconds > 0
        assert r.gbps == pytest.approx(nbytes / r.seconds / 1e9)
        assert r.bandwidth_fraction == pytest.approx(nbytes / r.seconds / 1e10)
    assert ours.our_speedup is None  # the speed-up is the reference's time over ours
    assert ref.our_speedup == pytest.approx(ref.seconds / ours.seconds) and math.isfinite(ref.our_speedup)
    table = ubench.format_table(rows).splitlines()
    assert len(table) == 2 + len(rows)
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in table]
    assert cells[0] == ["case", "method", "seconds", "GB/s", "of bandwidth", "asvp_fast speed-up", "peak extra MB",
                        "same picks"]
    assert all(len(row) == len(cells[0]) for row in cells)
    assert [row[1] for row in cells[2:]] == ["asvp_fast", "numpy-sort"]
    assert cells[2][5] == "-" and cells[3][5] == f"{ref.our_speedup:.1f}x"
    assert [float(row[2]) for row in cells[2:]] == [round(r.seconds, 3) for r in rows]


def test_benchmark_reference_matches_kernel_on_distinct_scores():
    case = ubench.Case("tiny", 2000, 30, "float32", False, "margin", 100)
    x = ubench.make_data(case)
    import asvp_fast as af

    np.testing.assert_array_equal(np.sort(ubench.numpy_sort_reference(x, case)), np.sort(af.select_uncertain(x, 100)))


def test_results_notes_survive_a_rerun(tmp_path):
    path = tmp_path / "RESULTS.md"
    path.write_text("# old table\n\n## Notes\n\n- keep me\n")
    assert bench._kept_notes(str(path)) == "\n## Notes\n\n- keep me\n"
    assert bench._kept_notes(str(tmp_path / "missing.md")) == ""


def test_diversity_benchmark_runs_on_tiny_sizes(tmp_path):
    import diversity as dbench

    cases = [
        dbench.DiversityCase("kc tiny", "kcenter", 3000, 16, 40, "float16", memmap=True,
                             references=(("numpy-incremental", 0), ("sklearn-style", 10))),
        dbench.DiversityCase("badge tiny", "badge", 2000, 8, 30, "float32", c=5,
                             references=(("labelbench-style", 10), ("materialised", -1))),
    ]
    rows = []
    for case in cases:
        rows += dbench.run_case(case, threads=0, bandwidth=1e10, log=lambda line: None, workdir=str(tmp_path))
    by = {(r.case, r.method): r for r in rows}
    assert by[("kc tiny", "numpy-incremental")].same_picks == "100.0% of 40"  # same greedy sequence
    assert by[("badge tiny", "materialised")].peak_extra_mb == 2000 * 5 * 8 * 4 / 2**20
    if dbench.reference_available("sklearn-style"):
        assert by[("kc tiny", "sklearn-style")].same_picks == "100.0% of 10"
    table = dbench.format_table(rows, lambda name: {"kc tiny": 40, "badge tiny": 30}[name])
    assert table.count("\n") == len(rows) + 1


def test_results_file_keeps_other_sections(tmp_path):
    path = tmp_path / "RESULTS.md"
    path.write_text("# old title\n\n## Uncertainty selection\n\nold U\n\n## Diversity selection\n\nold D\n"
                    "\n## Notes\n\n- keep me\n")
    bench.write_results(str(path), "machine", {bench.DIVERSITY_HEADING: "\n## Diversity selection\n\nnew D\n"})
    text = path.read_text()
    assert "old U" in text and "new D" in text and "old D" not in text
    assert text.index("Uncertainty") < text.index("Diversity") < text.index("## Notes") and "- keep me" in text


def test_transfer_benchmark_runs_and_agrees_on_tiny_sizes():
    import transfer as tbench

    rows = [tbench.run_case(case, probe=10.0, log=lambda line: None) for case in tbench.QUICK_CASES]
    assert [r.agreement is not None for r in rows] == [True, True, True]
    assert all(r.agreement < 1e-6 for r in rows)  # ours and the plain references agree
    # the extrapolated reference (a subset of classes) stays close to the full reference's time
    case = tbench.TransferCase("logme", 3000, 32, 12, ref_classes=4)
    row = tbench.run_case(case, probe=10.0, log=lambda line: None)
    assert row.ref_extrapolated and row.agreement is None
    assert "| logme N=3,000 D=32 C=12" in tbench.format_table([row])


def test_transfer_reference_extrapolation_formula():
    import transfer as tbench

    # fixed part 1.5 s, 0.5 s per class: 1 class 2.0 s, 4 classes 3.5 s -> 12 classes 7.5 s
    assert tbench.extrapolate_classes(2.0, 3.5, 4, 12) == pytest.approx(7.5)
    # noise made the 4-class run faster than the 1-class run: scale the 4-class time instead
    assert tbench.extrapolate_classes(2.0, 1.8, 4, 12) == pytest.approx(1.8 / 4 * 12)


def test_cli_bench_runs_from_a_source_checkout(tmp_path, monkeypatch, capsys):
    """`asvp-fast bench` finds bench/run.py in the checkout (here: the working directory, as
    with a non-editable install) and runs it; the results file keeps the hand-written notes."""
    monkeypatch.setattr(cli, "__file__", str(tmp_path / "site-packages" / "asvp_fast" / "cli.py"))
    monkeypatch.chdir(ROOT)
    out = tmp_path / "RESULTS.md"
    out.write_text("# x\n\n## Notes\n\n- keep\n")
    assert cli.main(["bench", "--suite", "transfer", "--quick", "--output", str(out)]) == 0
    text = out.read_text()
    assert "## Transferability: LogME and PED" in text and "- keep" in text and "--suite transfer --quick" in text
    assert "| ped N=2,000 D=32 C=10" in capsys.readouterr().out


def test_cli_bench_without_a_checkout_says_what_to_do(tmp_path, monkeypatch, capsys):
    """From an installed wheel (no bench/ beside the package nor in the working directory) the
    command fails with instructions, not a traceback."""
    monkeypatch.setattr(cli, "__file__", str(tmp_path / "site-packages" / "asvp_fast" / "cli.py"))
    monkeypatch.chdir(tmp_path)
    assert cli.main(["bench", "--quick"]) == 2
    err = capsys.readouterr().err
    assert "not part of the installed package" in err
    assert "Clone" in err and "python bench/run.py" in err


def test_benchmark_is_not_in_the_package():
    import asvp_fast

    package = Path(asvp_fast.__file__).parent
    assert not (package / "benchmarks").exists()
    assert not list(package.rglob("*_refs.py"))


def test_cli_output_into_a_closed_pipe_ends_quietly(monkeypatch):
    """`asvp-fast backends | head -1`: the reader goes away; the command ends with 141, no traceback."""
    import os
    import sys

    from asvp_fast import cli

    read_end, write_end = os.pipe()
    os.close(read_end)  # nobody reads: every write fails with EPIPE (Python ignores SIGPIPE)
    saved = os.dup(1)
    stream = os.fdopen(write_end, "w", buffering=1)
    monkeypatch.setattr(sys, "stdout", stream)
    try:
        assert cli.main(["backends"]) == 141
    finally:
        os.dup2(saved, 1)  # main points fd 1 at devnull on its way out; give pytest its stdout back
        os.close(saved)
        try:
            stream.close()
        except BrokenPipeError:
            pass


def test_python_dash_m_runs_the_command(tmp_path):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "asvp_fast", "--help"], cwd=tmp_path, capture_output=True, text=True,
                         check=True)
    assert "usage: asvp-fast" in out.stdout
