"""`llem run`: one experiment from the command line, validated, stored and summarised exactly
like a test's."""

import json
from pathlib import Path

import pytest
from factories import simulated_settings

from pytest_llem import build_config
from pytest_llem.cli.commands import main
from pytest_llem.testing import SimulatedGpu, simulated_gpus

SIM = [
    "--engine", "simulated", "--model", "sim", "--device", "cuda:0", "--n-prompts", "2",
    "--max-new-tokens", "4", "--repeats", "2", "--warmup", "1", "--energy", "nvml", "--baseline-s", "0",
    "--set", "warmup.thermal_floor_s=0", "--quiet",
]  # fmt: skip


def _run(tmp_path: Path, *extra: str) -> int:
    with simulated_gpus([SimulatedGpu()]):
        return main(["--dir", str(tmp_path / ".llem"), "run", *SIM, *extra])


def test_one_experiment_is_stored_and_summarised_like_a_test(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        _run(tmp_path, "--batch-size", "2", "--set", "energy.sample_hz=5", "--carbon-intensity", "300") == 0
    )
    out = capsys.readouterr().out
    assert "sim[simulated-" in out and "(measured)" in out and "CO2e/out-token" in out
    [report_path] = (tmp_path / ".llem" / "runs").glob("*/report.json")
    assert f"llem JSON report: {report_path}" in out
    report = json.loads(report_path.read_text())
    assert report["completed"] is True
    [experiment] = report["experiments"]
    assert experiment["status"] == "passed" and experiment["nodeid"] == "llem-run::sim[simulated-float32-bs2]"
    assert experiment["config"]["batch_size"] == 2 and experiment["config"]["energy"]["sample_hz"] == 5
    assert experiment["emissions"]["carbon_intensity_g_per_kwh"] == 300.0
    assert (report_path.parent / "experiments.parquet").is_file()
    # the same settings as a marker give the same config: one validation path
    same = build_config(
        (
            "marker",
            simulated_settings(energy={"meter": "nvml", "baseline_s": 0, "sample_hz": 5}, batch_size=2),
        )
    )
    assert experiment["config_hash"] == same.config_hash()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--batch-size", "0"], "llem: llem config from llem run: batch_size=0 is invalid"),
        (["--dtype", "float8"], "llem: llem config from llem run: dtype='float8' is invalid"),
        (["--set", "bogus=1"], "unknown key 'bogus'"),
        (["--set", "noequals"], "expected KEY=VALUE"),
        (["--country", "Atlantis"], "--llem-country='Atlantis' is not in CodeCarbon's country data"),
        (["--save", "../escape"], "--save"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    assert _run(tmp_path, *extra) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / ".llem" / "runs").exists()  # nothing stored for a run that never started


def test_html_is_written_when_asked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    html = tmp_path / "run.html"
    assert _run(tmp_path, "--html", str(html)) == 0
    assert html.is_file() and "<svg" in html.read_text()
    assert f"llem HTML report: {html}" in capsys.readouterr().out


def test_llem_run_takes_its_arguments_from_the_one_option_table(capsys: pytest.CaptureFixture[str]) -> None:
    from pytest_llem.cli.commands import _parser
    from pytest_llem.plugin.options import OPTIONS, RUN_OPTIONS, TABLE

    with pytest.raises(SystemExit):
        _parser().parse_args(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for option in RUN_OPTIONS:
        assert option.run_flag in text, option.run_flag
        # the same help text, from the table (where `llem run` needs other words, from its run_help)
        assert " ".join((option.run_help or option.help).split())[:40] in text, option.run_flag
    # a setting both take is one row: `--llem-repeats` in pytest is `--repeats` in llem run
    shared = {o.flag for o in OPTIONS} & {o.flag for o in RUN_OPTIONS}
    assert {"--llem-repeats", "--llem-energy", "--llem-model", "--llem-html"} <= shared
    assert len({o.flag for o in TABLE}) == len(TABLE)
