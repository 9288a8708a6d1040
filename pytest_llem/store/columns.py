"""The columns of `experiments.parquet`, listed once: each column's name, Arrow type and how it is
read from an experiment (and its session's report). The Parquet schema and every row are made
from this one list, so a column cannot be in one and missing from the other (pyarrow would drop
a row key its schema lacks without a word).
"""

from __future__ import annotations

import functools
import json
import operator
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Literal, get_origin

if TYPE_CHECKING:  # the records load with the first report read or written, not at start-up
    import pyarrow as pa

    from pytest_llem.schema.results import ExperimentResult, SessionReport

Kind = Literal["string", "float", "int", "bool", "timestamp"]
Reader = Callable[["ExperimentResult", "SessionReport | None"], Any]

LATENCY_METRICS = ("ttft", "tpot", "itl", "e2e")
LATENCY_PERCENTILES = ("p50", "p90", "p99")


@dataclass(frozen=True)
class Column:
    name: str
    kind: Kind
    read: Reader

    def arrow_type(self) -> pa.DataType:
        import pyarrow as pa

        types = {
            "string": pa.string(),
            "float": pa.float64(),
            "int": pa.int64(),
            "bool": pa.bool_(),
            "timestamp": pa.timestamp("us", tz="UTC"),
        }
        return types[self.kind]


def _timestamp(text: str) -> datetime | None:
    """The report's ISO creation time (UTC when it names no zone); None if it is not one."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _result(name: str, kind: Kind) -> Column:
    """A column that is the experiment's field of the same name."""
    return Column(name, kind, lambda result, _: getattr(result, name))


def _config(name: str, kind: Kind) -> Column:
    """A column that is the experiment's setting of the same name."""
    return Column(name, kind, lambda result, _: getattr(result.config, name))


def _run(name: str, kind: Kind, read: Callable[[SessionReport], Any]) -> Column:
    """A column of the session the experiment ran in (null for an experiment read alone)."""
    return Column(name, kind, lambda _, report: read(report) if report is not None else None)


def _latency(metric: str, percentile: str) -> Column:
    def read(result: ExperimentResult, _: SessionReport | None) -> Any:
        values = getattr(result.latency, f"{metric}_s") if result.latency else None
        return getattr(values, percentile) if values else None

    return Column(f"{metric}_{percentile}_s", "float", read)


def _energy_ci(bound: str) -> Column:
    def read(result: ExperimentResult, _: SessionReport | None) -> Any:
        stats = result.stats.get("energy_per_output_token_j")
        return getattr(stats, bound) if stats else None

    return Column(f"energy_per_output_token_j_{bound}", "float", read)


def _part(owner: str, name: str, kind: Kind, read: Callable[[Any], Any]) -> Column:
    """A column read from one of the experiment's optional records (null without it)."""

    def from_record(result: ExperimentResult, _: SessionReport | None) -> Any:
        record = getattr(result, owner)
        return read(record) if record is not None else None

    return Column(name, kind, from_record)


def _kind_of(annotation: Any) -> Kind | None:
    """A scalar field's column kind; None for a record or a list (kept in the JSON report)."""
    if get_origin(annotation) in (list, dict):
        return None
    kinds = set(getattr(annotation, "__args__", (annotation,))) - {type(None)}
    if kinds == {int}:
        return "int"
    if kinds == {float}:
        return "float"
    if kinds == {bool}:
        return "bool"
    if kinds <= {str} or all(isinstance(kind, str) for kind in kinds):  # str, or a Literal's values
        return "string"
    return None


def _nested() -> list[Column]:
    """The prefill/decode split, the steady state and a served load, one column per scalar
    field of their records (`phase_decode_energy_j`, `steady_state_energy_per_output_token_j`,
    `served_goodput_rps`, ...)."""
    from pytest_llem.schema.results import PhaseEnergy, ServedLoad, SteadyState

    return [
        _part(owner, f"{prefix}{name}", kind, operator.attrgetter(name))
        for owner, prefix, record in (
            ("phases", "phase_", PhaseEnergy),
            ("steady_state", "steady_state_", SteadyState),
            ("served", "served_", ServedLoad),
        )
        for name, field in record.model_fields.items()
        if (kind := _kind_of(field.annotation)) is not None
    ]


@functools.cache
def columns() -> tuple[Column, ...]:
    """Every column, in table order."""
    return (
        _run("run_id", "string", lambda report: report.run_id),
        _run("run_name", "string", lambda report: report.name),
        _run("created_at", "timestamp", lambda report: _timestamp(report.created_at)),
        _run("completed", "bool", lambda report: report.completed),
        Column(
            "fingerprint",
            "string",
            lambda result, report: result.fingerprint or (report.fingerprint if report else None),
        ),
        _run("commit", "string", lambda report: report.environment.git_commit),
        _run("dirty", "bool", lambda report: report.environment.git_dirty),
        _result("nodeid", "string"),
        _result("status", "string"),
        _result("error", "string"),
        _result("test_outcome", "string"),
        _result("config_hash", "string"),
        Column("engine", "string", lambda result, _: result.engine or result.config.engine),
        _result("engine_version", "string"),
        _config("model", "string"),
        _result("model_source", "string"),
        _config("dtype", "string"),
        _config("batch_size", "int"),
        _config("n_prompts", "int"),
        _config("max_new_tokens", "int"),
        _config("num_threads", "int"),
        _config("repeats", "int"),
        _config("min_window_s", "float"),
        _config("power_limit_w", "float"),
        _config("gpu_clocks_mhz", "int"),
        _result("window_passes", "int"),
        _result("window_calibration", "string"),
        _result("device", "string"),
        _result("output_tokens", "int"),
        _result("requested_output_tokens", "int"),
        _result("window_output_tokens", "int"),
        _result("input_tokens", "int"),
        _result("window_s", "float"),
        _result("tokens_per_second", "float"),
        _result("prefill_s", "float"),
        _result("time_per_output_token_s", "float"),
        _part("latency", "latency_scope", "string", lambda latency: latency.scope),
        *[_latency(metric, percentile) for metric in LATENCY_METRICS for percentile in LATENCY_PERCENTILES],
        _result("energy_j", "float"),
        _result("energy_per_output_token_j", "float"),
        _energy_ci("ci95_low"),
        _energy_ci("ci95_high"),
        _result("baseline_power_w", "float"),
        _result("baseline_skipped_reason", "string"),
        _result("energy_adjusted_j", "float"),
        _result("energy_adjusted_per_output_token_j", "float"),
        _result("energy_per_input_token_j", "float"),
        _result("energy_per_total_token_j", "float"),
        _result("energy_per_request_j", "float"),
        _result("average_power_w", "float"),
        _result("output_tokens_per_joule", "float"),
        Column("meter", "string", lambda result, _: result.config.energy.meter),
        _part("energy", "energy_source", "string", lambda energy: energy.source),
        _part("energy", "energy_measured", "bool", lambda energy: energy.measured),
        _part("energy", "energy_method", "string", lambda energy: energy.method),
        _part("energy", "energy_assumptions_json", "string", lambda energy: _json(energy.assumptions)),
        _part(
            "emissions",
            "g_co2e_per_output_token",
            "float",
            lambda emissions: emissions.g_co2e_per_output_token,
        ),
        _part(
            "emissions",
            "carbon_intensity_g_per_kwh",
            "float",
            lambda emissions: emissions.carbon_intensity_g_per_kwh,
        ),
        _part("emissions", "carbon_intensity_source", "string", lambda emissions: emissions.intensity_source),
        _part("flops", "flops", "float", lambda flops: flops.flops),
        _part("flops", "flops_method", "string", lambda flops: flops.method),
        _part("flops", "flops_confidence", "string", lambda flops: flops.confidence),
        Column("warnings", "string", lambda result, _: ",".join(dict.fromkeys(result.warning_flags))),
        _part("validity", "validity", "string", lambda validity: validity.status),
        _part(
            "validity",
            "validity_failed",
            "string",
            lambda validity: ",".join(c.name for c in validity.failed),
        ),
        *_nested(),
        _part("slot", "worker", "string", lambda slot: slot.worker),  # the xdist worker, null without xdist
        _part("slot", "slot_gpus", "string", lambda slot: ",".join(str(i) for i in slot.gpu_indexes)),
        _part("slot", "slot_cores", "string", lambda slot: ",".join(map(str, slot.cores))),
        _part("slot", "concurrent_experiments", "int", lambda slot: slot.concurrent_experiments),
        _result("timeseries_path", "string"),
        Column("config_json", "string", lambda result, _: result.config.model_dump_json()),
    )
