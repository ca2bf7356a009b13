"""The benchmark runner's smoke test: ``python -m benchmarks --tiny`` end to end, no timings asserted."""
import pathlib
import re
import sys

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).parent.parent))  # the repository root, home of `benchmarks`

from benchmarks import report, runner, sharded, workloads  # noqa: E402
from benchmarks.timing import Stats  # noqa: E402


@pytest.mark.slow  # every workload compiled and timed once: ~90 s, so in .ci/run's slow pass
def test_tiny_run_writes_every_workload(tmp_path):
    output = tmp_path / "benchmarks.md"
    assert runner.main(["--tiny", "--output", str(output)]) == 0  # 0: every sanity check passed
    page = output.read_text()
    for family, names in workloads.FAMILIES.items():
        text = _section(page, report.section_name("cpu", family))
        for workload in workloads.all_workloads(workloads.TINY):
            assert (f"| {workload.label}" in text) == (workload.name in names)
        headings = (("Targets", "fwd+bwd", "Memory (MiB)", "Compile times (s)") if family == "attention"
                    else ("Targets", "Ops", "Residual bytes", "Compile times"))
        for heading in headings:
            assert f"### {heading}" in text
    for heading in ("Training steps", "MLP step throughput"):
        assert f"### {heading}" in _section(page, "cpu")
    assert "FAILED" not in page and "ok: vs autodiff" in page
    for name in ("gpu", "gpu_second", "gpu_attention"):  # the placeholders a GPU run fills
        assert f"<!-- BEGIN {name} -->" in page
    _assert_sharded_section(_section(page, report.SHARDED))


def _section(page, name):
    return page.split(f"<!-- BEGIN {name} -->")[1].split(f"<!-- END {name} -->")[0]


def _assert_sharded_section(text):
    assert text.startswith("\n## CPU, 8 simulated devices: Auto and Explicit mesh axes") and "8 device(s)" in text
    for pair in sharded.PAIRS:
        assert re.search(rf"\| {re.escape(pair)} \| [\d.]+× \([\d.]+–[\d.]+\) \| ok: ", text)
    assert "| step | " + " | ".join(report.COLLECTIVES) + " |" in text
    for step in ("purebp, Auto", "autodiff, Auto", "purebp, Explicit", "autodiff, Explicit"):
        # Data parallelism must reduce the gradients at least once; how XLA combines them is its own.
        assert re.search(rf"\| {step} \| [1-9]\d* \| \d+ \| \d+ \| \d+ \| \d+ \|", text)


def test_only_the_sharded_step_replaces_its_section_and_keeps_the_rest(tmp_path, monkeypatch):
    output = tmp_path / "benchmarks.md"
    output.write_text(report.page({"cpu": "## CPU\n\nsingle-device tables\n"}))
    counts = dict.fromkeys(report.COLLECTIVES, 0) | {"all-reduce": 1}
    measured = report.ShardedResult(  # what the 8-device child would report, without its 20 s
        label="CNN", devices="cpu (cpu), 8 device(s)", collectives={"purebp, Auto": counts},
        ratios={"purebp / autodiff, Auto": Stats(0.9, 0.8, 1.0)},
        checks={"purebp / autodiff, Auto": report.Check("loss, updates", 1e-7, 1e-4)})
    monkeypatch.setattr(sharded, "run", lambda **options: measured)
    assert runner.main(["--tiny", "--only", report.SHARDED, "--output", str(output)]) == 0
    page = output.read_text()
    assert "single-device tables" in page and "| purebp / autodiff, Auto | 0.9× (0.8–1) | ok: 1.0e-07 |" in page
    assert "| purebp, Auto | 1 | 0 | 0 | 0 | 0 |" in page
    assert page.index("BEGIN cpu") < page.index(f"BEGIN {report.SHARDED}") < page.index("BEGIN gpu")


@pytest.mark.slow  # a tiny run of two ops still compiles twelve programs: 7 s of the default run's budget
def test_a_run_of_the_second_family_replaces_its_section_alone(tmp_path):
    output = tmp_path / "benchmarks.md"
    output.write_text(report.page({"cpu": "## CPU\n\nfirst family's tables\n"}))
    # dropout and embedding: the ops with an argument held fixed, a key and integer ids
    assert runner.main(["--tiny", "--only", "dropout", "embedding", "--repeats", "1", "--warmup", "0",
                        "--output", str(output)]) == 0
    page = output.read_text()
    assert "first family's tables" in _section(page, "cpu")
    second = _section(page, "cpu_second")
    assert second.startswith("\n## CPU, the second family") and "| dropout 0.1, (16, 32) | fwd+bwd |" in second
    assert "| embedding, 16 ids into (64, 32) | 16 | 64 | 0.25× | met |" in second  # uint8 ids (64 rows), not int32
    assert page.index("BEGIN cpu ") < page.index("BEGIN cpu_second") < page.index(f"BEGIN {report.SHARDED}")


def test_attention_reports_a_system_too_large_to_run_and_each_target():
    workload = workloads.attention(workloads.TINY, np.random.default_rng(0))[0]
    mib, gib = 2 ** 20, 2 ** 30
    measured = report.Result(  # as _run_attention reports it where autodiff's program would need 40 GiB
        workload, repeats=1, times={(report.FWD_BWD, system): Stats(t, t, t) for system, t in
                                    ((report.PUREBP, 2.0), (report.JAX_NN, 4.0), (report.TORCH[0], 1.0))},
        compile_seconds={(report.FWD_BWD, system): 0.5 for system in report.ATTENTION_JAX},
        residual_bytes={report.PUREBP: workload.blockwise_residual_bytes, report.AUTODIFF: 100 * mib,
                        report.JAX_NN: 50 * mib},
        footprints={report.PUREBP: report.Footprint(9 * gib, 10 * gib),
                    report.AUTODIFF: report.Footprint(30 * gib, 40 * gib),
                    report.JAX_NN: report.Footprint(10 * mib, 11 * mib)},
        checks=[report.Check("vs PyTorch (output, cotangents)", 1e-7, 1e-4)])
    text = report.attention_section("cpu_attention", {workload.name: measured}, {"date": "today"}, tiny=False,
                                    memory_limit=16 * gib, tolerance=1e-4)
    row = f"| {workload.label} |"
    assert f"{row} 0.06 MiB: met | 0.000627×: met | 0.3×: missed | — (autodiff not run) |" in text
    assert (f"{row} 1 | 2 (2–2) | would need 40.0 GiB | 4 (4–4) | 1 (1–1) | — | 0.5× | 2× | "
            "ok: vs PyTorch (output, cotangents) 1.0e-07 |") in text
    assert f"{row} 0.06 | 100.00 | 50.00 | 9,216.00 | 30,720.00 | 10.00 |" in text
    assert "exceed 16 GiB is compiled but not run" in text and "(the run fails above 1e-4)" in text


def test_collectives_are_counted_by_op_name_whatever_their_result_type():
    hlo = """
      %all-reduce-start = (f32[3]{0}, f32[2,2]{1,0}) all-reduce-start(f32[3]{0} %a, f32[2,2]{1,0} %b), to_apply=%add
      %all-reduce-done = (f32[3]{0}, f32[2,2]{1,0}) all-reduce-done(%all-reduce-start)
      %all-reduce.1 = f32[] all-reduce(f32[] %c), to_apply=%add
      %all-gather = f32[8,4]{1,0} all-gather(f32[1,4]{1,0} %d), dimensions={0}
    """
    assert sharded.collective_counts(hlo) == {"all-reduce": 2, "all-gather": 1, "reduce-scatter": 0,
                                              "all-to-all": 0, "collective-permute": 0}


def test_without_torch_the_pytorch_columns_are_empty_and_tiny_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(runner, "_torch_eager", lambda backend: None)
    monkeypatch.setattr(runner, "DEFAULT_OUTPUT", tmp_path / "benchmarks.md")
    assert runner.main(["--tiny", "--only", "max_pool", "--repeats", "1", "--warmup", "0"]) == 0
    printed = capsys.readouterr().out
    assert "| backward |" in printed and "| — | — |" in printed and "torch not used" in printed
    assert "simulated devices" not in printed  # --only without cnn_sharded leaves it out
    assert not (tmp_path / "benchmarks.md").exists()


def test_names_match_the_workloads():
    assert tuple(w.name for w in workloads.all_workloads(workloads.TINY)) == workloads.NAMES
    assert len(set(workloads.NAMES)) == len(workloads.NAMES)  # no workload in two families


def test_a_run_keeps_the_other_backends_section():
    gpu = "<!-- BEGIN gpu -->\n## GPU\n\nmeasured on a GPU\n<!-- END gpu -->\n"
    page = report.page({"cpu": "## CPU\n\nnew\n"}, report.page({"cpu": "## CPU\n\nold\n"}) + "\n" + gpu)
    assert "measured on a GPU" in page and "new" in page and "old" not in page
    assert page.count("<!-- BEGIN gpu -->") == 1 and page.index("BEGIN cpu") < page.index("BEGIN gpu")


@pytest.mark.parametrize("argv", [["--repeats", "0"], ["--warmup", "-1"], ["--only", "resnet"], ["--gpu"]])
def test_bad_arguments_exit_with_a_usage_error(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        runner.parse_args(argv)
    assert exit_info.value.code == 2
