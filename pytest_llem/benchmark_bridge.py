"""pytest-benchmark interop: llem figures in `extra_info` and in the --benchmark-json file."""

from __future__ import annotations

from typing import Any

import pytest

from pytest_llem.results import ExperimentResult


def llem_extra_info(result: ExperimentResult) -> dict[str, Any]:
    return {
        "llem_tokens_per_second": result.tokens_per_second,
        "llem_output_tokens": result.output_tokens,
        "llem_energy_per_output_token_j": result.energy_per_output_token_j,
        "llem_energy_j": result.energy_j,
        "llem_energy_source": result.energy.source if result.energy else None,
        "llem_energy_measured": result.energy.measured if result.energy else None,
        "llem_config_hash": result.config_hash,
        "llem_warnings": result.warning_flags,
    }


def attach_to_benchmark(item: pytest.Item, result: ExperimentResult) -> None:
    """When the test also uses pytest-benchmark's `benchmark` fixture, fill its extra_info."""
    benchmark = getattr(item, "funcargs", {}).get("benchmark")
    if benchmark is not None and hasattr(benchmark, "extra_info"):
        benchmark.extra_info.update(llem_extra_info(result))


class BenchmarkJsonHook:
    """Registered when pytest-benchmark is present: add every llem result to --benchmark-json."""

    def __init__(self, results: list[ExperimentResult]) -> None:
        self._results = results

    def pytest_benchmark_update_json(
        self, config: pytest.Config, benchmarks: Any, output_json: dict[str, Any]
    ) -> None:
        output_json["llem"] = [
            {"nodeid": r.nodeid, "status": r.status, **llem_extra_info(r)} for r in self._results
        ]
        by_name = {r.nodeid: r for r in self._results}
        for bench in output_json.get("benchmarks", []):
            result = by_name.get(bench.get("fullname", ""))
            if result is not None:
                bench.setdefault("extra_info", {}).update(llem_extra_info(result))
