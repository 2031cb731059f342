"""The README's quick start runs, the CLI answers, and the benchmark machinery works on tiny sizes."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from asvp_fast import cli
from asvp_fast.benchmarks import acquisition as bench

README = Path(__file__).resolve().parents[1] / "README.md"


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
    case = bench.Case("tiny", 3000, 40, dtype, logits, kind, 50)
    rows = bench.run_case(case, threads=0, bandwidth=1e10, repeat=1, with_torch=False)
    assert [r.method for r in rows] == ["asvp_fast", "numpy-sort"]
    assert rows[1].agrees == "100.0%"
    assert rows[1].our_speedup and rows[1].our_speedup > 0
    table = bench.format_table(rows)
    assert table.count("\n") == 3


def test_benchmark_reference_matches_kernel_on_distinct_scores():
    case = bench.Case("tiny", 2000, 30, "float32", False, "margin", 100)
    x = bench.make_data(case)
    import asvp_fast as af

    np.testing.assert_array_equal(np.sort(bench.numpy_sort_reference(x, case)), np.sort(af.select_uncertain(x, 100)))


def test_results_notes_survive_a_rerun(tmp_path):
    path = tmp_path / "RESULTS.md"
    path.write_text("# old table\n\n## Notes\n\n- keep me\n")
    assert bench._kept_notes(str(path)) == "\n## Notes\n\n- keep me\n"
    assert bench._kept_notes(str(tmp_path / "missing.md")) == ""


def test_diversity_benchmark_runs_on_tiny_sizes(tmp_path):
    from asvp_fast.benchmarks import diversity as dbench

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


def test_transfer_benchmark_runs_and_agrees_on_tiny_sizes(tmp_path):
    from asvp_fast.benchmarks import transfer as tbench
    from asvp_fast.benchmarks.acquisition import main as bench_main

    rows = [tbench.run_case(case, probe=10.0, log=lambda line: None) for case in tbench.QUICK_CASES]
    assert [r.agreement is not None for r in rows] == [True, True, True]
    assert all(r.agreement < 1e-6 for r in rows)  # ours and the plain references agree
    # the extrapolated reference (a subset of classes) stays close to the full reference's time
    case = tbench.TransferCase("logme", 3000, 32, 12, ref_classes=4)
    row = tbench.run_case(case, probe=10.0, log=lambda line: None)
    assert row.ref_extrapolated and row.agreement is None and row.ref_s > 0
    assert "| logme N=3,000 D=32 C=12" in tbench.format_table([row])
    out = tmp_path / "RESULTS.md"
    out.write_text("# x\n\n## Notes\n\n- keep\n")
    assert bench_main(["--suite", "transfer", "--quick", "--output", str(out)]) == 0
    text = out.read_text()
    assert "## Transferability: LogME and PED" in text and "- keep" in text and "--suite transfer --quick" in text
