"""Grams CO2e per output token from the user's carbon intensity or CodeCarbon's offline
country data, labelled with where the intensity came from."""

import json
import math
from pathlib import Path

import pytest
from factories import energy_info, make_result

from pytest_llem.measure.emissions import country_intensity, emissions_for, given_intensity, resolve_intensity
from pytest_llem.schema.errors import ConfigError
from pytest_llem.schema.results import ExperimentResult
from pytest_llem.testing import SimulatedGpu, simulated_gpus


def _result(j_per_token: float | None, measured: bool = False) -> ExperimentResult:
    return make_result(
        output_tokens=100,
        energy_j=None if j_per_token is None else j_per_token * 100,
        energy_per_output_token_j=j_per_token,
        energy=energy_info("rapl" if measured else "estimate", measured=measured),
    )


def test_grams_per_token_are_energy_times_the_given_intensity() -> None:
    emissions = emissions_for(_result(0.36), given_intensity(500.0))
    assert emissions is not None
    # 0.36 J = 1e-7 kWh; x 500 g/kWh = 5e-5 g
    assert emissions.g_co2e_per_output_token == pytest.approx(5e-5)
    assert emissions.g_co2e_per_window == pytest.approx(5e-3)
    assert emissions.carbon_intensity_g_per_kwh == 500.0
    assert emissions.intensity_source == "given by the user (--llem-carbon-intensity)"
    assert emissions.energy_basis == "energy_per_output_token_j (gross, estimated)"
    measured = emissions_for(_result(0.36, measured=True), given_intensity(1.0))
    assert measured is not None
    assert measured.energy_basis.endswith("(gross, measured)")


def test_no_energy_or_no_intensity_gives_no_emissions() -> None:
    assert emissions_for(_result(None), given_intensity(500.0)) is None
    assert emissions_for(_result(0.36), None) is None
    assert resolve_intensity(None, None) is None


def test_a_country_s_intensity_comes_from_codecarbon_s_offline_data() -> None:
    import importlib.resources

    packaged = importlib.resources.files("codecarbon") / "data" / "private_infra" / "global_energy_mix.json"
    expected = json.loads(packaged.read_text(encoding="utf-8"))["FRA"]["carbon_intensity"]
    assert 0 < expected < 1000
    intensity = country_intensity("fra")
    assert intensity.g_per_kwh == expected
    assert intensity.source.startswith("CodeCarbon offline country data: FRA (France")


def test_a_country_file_is_read_as_given(tmp_path: Path) -> None:
    data = tmp_path / "mix.json"
    data.write_text(
        json.dumps({"XYZ": {"carbon_intensity": 123.0, "country_name": "Testland", "year": 2020}})
    )
    intensity = country_intensity("XYZ", data)
    assert (intensity.g_per_kwh, intensity.source) == (
        123.0,
        "CodeCarbon offline country data: XYZ (Testland, 2020)",
    )


@pytest.mark.parametrize(
    ("g_per_kwh", "country", "message"),
    [
        (None, "ZZZ", "--llem-country='ZZZ' is not in CodeCarbon's country data"),
        (400.0, "FRA", "both given: give one"),
        (-1.0, None, "--llem-carbon-intensity=-1.0 is invalid"),
        (math.inf, None, "--llem-carbon-intensity=inf is invalid"),
        (math.nan, None, "--llem-carbon-intensity=nan is invalid"),
    ],
)
def test_bad_intensity_settings_are_one_line_errors(
    g_per_kwh: float | None, country: str | None, message: str
) -> None:
    with pytest.raises(ConfigError) as error:
        resolve_intensity(g_per_kwh, country)
    assert message in str(error.value) and "\n" not in str(error.value)


CONFTEST = """
import contextlib
from pytest_llem.testing import SimulatedGpu, simulated_gpus

_simulation = contextlib.ExitStack()

def pytest_configure(config):
    _simulation.enter_context(simulated_gpus([SimulatedGpu()]))

def pytest_unconfigure(config):
    _simulation.close()
"""

TEST_FILE = """
import pytest

@pytest.mark.llem(engine="simulated", model="sim", device="cuda:0", n_prompts=2, max_new_tokens=4,
                  repeats=2, warmup={"n_warmup": 1, "thermal_floor_s": 0},
                  energy={"meter": "nvml", "baseline_s": 0})
def test_sim(llem):
    result = llem.run()
    assert result.emissions is not None
"""


def test_the_report_and_summary_carry_emissions_with_their_source(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(TEST_FILE)
    pytester.makeini("[pytest]\nllem_carbon_intensity = 400\n")
    report = pytester.path / "report.json"
    import pandas  # noqa: F401  (imported here, not first inside the in-process run, see test_progress)

    with simulated_gpus([SimulatedGpu()]):
        pass  # the same for what the simulation imports (Zeus, CodeCarbon)
    result = pytester.runpytest("-p", "no:cacheprovider", f"--llem-json={report}")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*CO2e/out-token*", "*test_sim*mg*"])
    [experiment] = json.loads(report.read_text())["experiments"]
    emissions = experiment["emissions"]
    assert emissions["carbon_intensity_g_per_kwh"] == 400.0
    assert emissions["g_co2e_per_output_token"] == pytest.approx(
        experiment["energy_per_output_token_j"] / 3.6e6 * 400.0
    )
    assert emissions["energy_basis"] == "energy_per_output_token_j (gross, measured)"


def test_an_unknown_country_stops_the_session_with_one_line(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_a(): pass")
    result = pytester.runpytest("-p", "no:cacheprovider", "--llem-country=Atlantis")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --llem-country='Atlantis' is not in CodeCarbon's country data*"])
    assert "Traceback" not in result.stderr.str() and "INTERNALERROR" not in result.stdout.str()
