"""pytest-benchmark interop: llem figures in `extra_info` and in the --benchmark-json file."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from pytest_llem.schema.results import ExperimentResult


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


def benchmarking(item: pytest.Item) -> bool:
    """True while the test's pytest-benchmark fixture is in use (`benchmark(llem.run)`)."""
    benchmark = getattr(item, "funcargs", {}).get("benchmark")
    return bool(getattr(benchmark, "_mode", None))


def merge_rounds(results: list[ExperimentResult]) -> ExperimentResult:
    """One experiment from the calls pytest-benchmark made: every call ran one window, so
    the windows become the repeats of a single result, with the aggregates recomputed the
    way the lifecycle computes them (totals over totals, means of windows)."""
    from pytest_llem.measure.statistics import summarise

    first = results[0]
    repeats = [r.model_copy() for res in results for r in res.repeats]
    for index, repeat in enumerate(repeats):  # numbered across the rounds
        repeat.index = index
    total_tokens = sum(r.output_tokens for r in repeats)
    total_window = sum(r.window_s for r in repeats)
    energies = [r.energy_j for r in repeats if r.energy_j is not None]
    has_energy = bool(repeats) and len(energies) == len(repeats)
    stats = {
        "tokens_per_second": summarise([r.tokens_per_second for r in repeats]),
        "window_s": summarise([r.window_s for r in repeats]),
    }
    if has_energy:
        stats["energy_j"] = summarise(energies)
        per_token = [r.energy_per_output_token_j for r in repeats if r.energy_per_output_token_j is not None]
        if per_token:
            stats["energy_per_output_token_j"] = summarise(per_token)
    seen: set[tuple[str, str]] = set()
    warnings = []
    for result in results:
        for warning in result.warnings:
            if (warning.flag, warning.message) not in seen:
                seen.add((warning.flag, warning.message))
                warnings.append(warning)
    tpots = [r.time_per_output_token_s for r in repeats if r.time_per_output_token_s is not None]
    return first.model_copy(
        update={
            "config": first.config.model_copy(update={"repeats": len(repeats)}),
            "repeats": repeats,
            "window_s": total_window / len(repeats),
            "tokens_per_second": total_tokens / total_window if total_window > 0 else 0.0,
            "prefill_s": sum(r.prefill_s or 0.0 for r in repeats) / len(repeats),
            "time_per_output_token_s": sum(tpots) / len(tpots) if tpots else None,
            "energy_j": sum(energies) / len(energies) if has_energy else None,
            "energy_per_output_token_j": sum(energies) / total_tokens
            if has_energy and total_tokens
            else None,
            "stats": stats,
            "warnings": warnings,
        }
    )


def attach_to_benchmark(item: pytest.Item, result: ExperimentResult) -> None:
    """When the test also uses pytest-benchmark's `benchmark` fixture, fill its extra_info."""
    benchmark = getattr(item, "funcargs", {}).get("benchmark")
    if benchmark is not None and hasattr(benchmark, "extra_info"):
        benchmark.extra_info.update(llem_extra_info(result))


class BenchmarkJsonHook:
    """Registered when pytest-benchmark is present: add every llem result to --benchmark-json,
    and turn the calls of `benchmark(llem.run)` into one experiment when the test returns."""

    def __init__(self, results: list[ExperimentResult]) -> None:
        self._results = results

    @pytest.hookimpl(wrapper=True)
    def pytest_pyfunc_call(self, pyfuncitem: pytest.Function) -> Any:
        outcome = yield
        fixture = pyfuncitem.funcargs.get("llem")
        flush = getattr(fixture, "flush_benchmark_rounds", None)
        if flush is not None:
            flush()
        return outcome

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
