"""The benchmark runner's smoke test: ``python -m benchmarks --tiny`` end to end, no timings asserted."""
import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).parent.parent))  # the repository root, home of `benchmarks`

from benchmarks import report, runner, workloads  # noqa: E402


def test_tiny_run_writes_every_workload(tmp_path):
    output = tmp_path / "benchmarks.md"
    assert runner.main(["--tiny", "--output", str(output)]) == 0  # 0: every sanity check passed
    page = output.read_text()
    for workload in workloads.all_workloads(workloads.TINY):
        assert f"| {workload.label}" in page
    for heading in ("Targets", "Training steps", "MLP step throughput", "Ops", "Residual bytes", "Compile times"):
        assert f"### {heading}" in page
    assert "FAILED" not in page and "ok: vs autodiff" in page
    assert "<!-- BEGIN gpu -->" in page  # the placeholder a GPU run fills


def test_without_torch_the_pytorch_columns_are_empty_and_tiny_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(runner, "_torch_eager", lambda backend: None)
    monkeypatch.setattr(runner, "DEFAULT_OUTPUT", tmp_path / "benchmarks.md")
    assert runner.main(["--tiny", "--only", "max_pool", "--repeats", "1", "--warmup", "0"]) == 0
    printed = capsys.readouterr().out
    assert "| backward |" in printed and "| — | — |" in printed and "torch not used" in printed
    assert not (tmp_path / "benchmarks.md").exists()


def test_names_match_the_workloads():
    assert tuple(w.name for w in workloads.all_workloads(workloads.TINY)) == workloads.NAMES


def test_a_run_keeps_the_other_backends_section():
    gpu = "<!-- BEGIN gpu -->\n## GPU\n\nmeasured on a GPU\n<!-- END gpu -->\n"
    page = report.page("cpu", "## CPU\n\nnew\n", report.page("cpu", "## CPU\n\nold\n") + "\n" + gpu)
    assert "measured on a GPU" in page and "new" in page and "old" not in page
    assert page.count("<!-- BEGIN gpu -->") == 1 and page.index("BEGIN cpu") < page.index("BEGIN gpu")


@pytest.mark.parametrize("argv", [["--repeats", "0"], ["--warmup", "-1"], ["--only", "resnet"], ["--gpu"]])
def test_bad_arguments_exit_with_a_usage_error(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        runner.parse_args(argv)
    assert exit_info.value.code == 2
