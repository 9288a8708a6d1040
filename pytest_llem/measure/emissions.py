"""Grams CO2e per output token: an experiment's energy times a grid's carbon intensity.

The intensity is either given by the user (`--llem-carbon-intensity G_PER_KWH`) or read from
CodeCarbon's offline country data (`--llem-country ISO`, the `global_energy_mix.json` file
that the `codecarbon` package ships). It is never looked up on a network: CodeCarbon's online
tracker contacts geolocation hosts, so this module reads the data file without importing
CodeCarbon's code at all. Every figure carries where its intensity came from, and is as
estimated as the energy it is computed from (and more: a grid average is not your grid now).
"""

from __future__ import annotations

import importlib.util
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_llem.schema.errors import ConfigError
from pytest_llem.schema.results import Emissions, ExperimentResult

JOULES_PER_KWH = 3.6e6
CODECARBON_MIX = ("data", "private_infra", "global_energy_mix.json")


@dataclass(frozen=True)
class CarbonIntensity:
    """Grams CO2e per kWh of electricity, and where that number came from."""

    g_per_kwh: float
    source: str


def given_intensity(g_per_kwh: float, where: str = "--llem-carbon-intensity") -> CarbonIntensity:
    if not math.isfinite(g_per_kwh) or g_per_kwh < 0:
        raise ConfigError(
            f"{where}={g_per_kwh!r} is invalid: give grams CO2e per kWh as a finite number >= 0 "
            "(e.g. 400; world average about 475)"
        )
    return CarbonIntensity(g_per_kwh, f"given by the user ({where})")


def _codecarbon_mix_path() -> Path | None:
    spec = importlib.util.find_spec("codecarbon")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))).joinpath(*CODECARBON_MIX)
    return path if path.is_file() else None


def country_intensity(iso: str, mix_path: Path | None = None) -> CarbonIntensity:
    """The country's average carbon intensity from CodeCarbon's offline energy-mix data."""
    code = iso.strip().upper()
    path = mix_path or _codecarbon_mix_path()
    if path is None:
        raise ConfigError(
            f"--llem-country={iso!r} needs CodeCarbon's offline data: pip install 'pytest-llem[codecarbon]', "
            "or give --llem-carbon-intensity G_PER_KWH instead"
        )
    try:
        mix: dict[str, dict[str, Any]] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"--llem-country={iso!r}: cannot read CodeCarbon's data file {path}: {exc}"
        ) from None
    entry = mix.get(code)
    if entry is None:
        raise ConfigError(
            f"--llem-country={iso!r} is not in CodeCarbon's country data ({len(mix)} countries, "
            "3-letter ISO codes such as FRA, DEU, USA); or give --llem-carbon-intensity G_PER_KWH"
        )
    value = entry.get("carbon_intensity")
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(
            f"--llem-country={iso!r}: CodeCarbon's data has no carbon intensity for {code}; "
            "give --llem-carbon-intensity G_PER_KWH instead"
        )
    year = entry.get("year")
    name = entry.get("country_name", code)
    return CarbonIntensity(
        float(value), f"CodeCarbon offline country data: {code} ({name}{f', {year}' if year else ''})"
    )


def resolve_intensity(g_per_kwh: float | None, country: str | None) -> CarbonIntensity | None:
    """The session's carbon intensity from the two options; None when neither is set."""
    if g_per_kwh is not None and country is not None:
        raise ConfigError(
            f"--llem-carbon-intensity={g_per_kwh!r} and --llem-country={country!r} both given: "
            "give one (your own figure, or CodeCarbon's country average)"
        )
    if g_per_kwh is not None:
        return given_intensity(g_per_kwh)
    if country is not None:
        return country_intensity(country)
    return None


def emissions_of(
    energy_per_output_token_j: float | None,
    energy_j: float | None,
    energy_label: str,
    intensity: CarbonIntensity | None,
) -> Emissions | None:
    """Emissions of published energy figures (gross energy per output token, the window's
    energy), labelled with how the energy was obtained; None without a figure or an intensity."""
    if intensity is None or energy_per_output_token_j is None:
        return None
    per_token_kwh = energy_per_output_token_j / JOULES_PER_KWH
    window_g = energy_j / JOULES_PER_KWH * intensity.g_per_kwh if energy_j is not None else None
    return Emissions(
        g_co2e_per_output_token=per_token_kwh * intensity.g_per_kwh,
        g_co2e_per_window=window_g,
        carbon_intensity_g_per_kwh=intensity.g_per_kwh,
        intensity_source=intensity.source,
        energy_basis=f"energy_per_output_token_j (gross, {energy_label})",
    )


def emissions_for(result: ExperimentResult, intensity: CarbonIntensity | None) -> Emissions | None:
    """Emissions of a stored result's figures (as the builder computes them: `emissions_of`)."""
    return emissions_of(result.energy_per_output_token_j, result.energy_j, result.energy_label, intensity)
