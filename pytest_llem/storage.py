"""Stored runs under `.llem/runs/`, keyed by machine fingerprint and git commit.

Every session that ran experiments is stored as `runs/<UTC time>_<commit>[-dirty]/`.
`--llem-save NAME` also stores it as `runs/NAME/` (replacing an older run of that name);
`--llem-autosave` also stores it under its commit, `runs/<commit>[-dirty]/`, so a later run
can compare with `--llem-compare <commit>`. `latest` is the newest stored run measured on
the same machine (fingerprint), other than the current one.
"""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from pytest_llem.environment import EnvironmentSnapshot
from pytest_llem.report import REPORT_NAME, ReportError, read_report
from pytest_llem.results import SessionReport

if TYPE_CHECKING:
    import pytest


def machine_fingerprint(environment: EnvironmentSnapshot) -> str:
    """12 hex digits over what makes energy figures comparable: CPU, core count, GPUs, driver."""
    parts = {
        "cpu": environment.cpu_model,
        "cpus": environment.cpu_count,
        "arch": platform.machine(),
        "gpus": sorted(g.name or "?" for g in environment.gpus),
        "driver": environment.driver_version,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class StoredRun:
    name: str
    path: Path
    created_at: str
    fingerprint: str | None
    commit: str | None
    dirty: bool | None
    experiments: int


class RunStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.runs_dir = root / "runs"

    def fingerprint(self, environment: EnvironmentSnapshot) -> str:
        return machine_fingerprint(environment)

    def new_run_dir(self, commit: str | None, dirty: bool | None, when: datetime) -> Path:
        stamp = when.strftime("%Y%m%dT%H%M%SZ")
        name = f"{stamp}_{(commit or 'nogit')[:8]}{'-dirty' if dirty else ''}"
        candidate, n = self.runs_dir / name, 1
        while candidate.exists():
            n += 1
            candidate = self.runs_dir / f"{name}.{n}"
        return candidate

    def _copy(self, source_dir: Path, name: str) -> Path:
        target = self.runs_dir / name
        staging = self.runs_dir / f".{name}.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(source_dir, staging)
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
        return target

    def after_write(self, report: SessionReport, report_path: Path, config: pytest.Config) -> None:
        from pytest_llem import options

        name = options.option_value(config, options.option_by_flag("--llem-save"))
        autosave = options.option_value(config, options.option_by_flag("--llem-autosave"))
        if report_path.name != REPORT_NAME:
            return  # a custom --llem-json file is the user's to keep
        if name:
            self._copy(report_path.parent, str(name))
        if autosave:
            commit = (report.environment.git_commit or "nogit")[:8]
            self._copy(report_path.parent, commit + ("-dirty" if report.environment.git_dirty else ""))

    def list_runs(self) -> list[StoredRun]:
        runs: list[StoredRun] = []
        if not self.runs_dir.is_dir():
            return runs
        for directory in sorted(self.runs_dir.iterdir()):
            if directory.name.startswith(".") or not (directory / REPORT_NAME).is_file():
                continue
            try:
                report = read_report(directory)
            except ReportError:
                continue
            runs.append(
                StoredRun(
                    name=directory.name,
                    path=directory,
                    created_at=report.created_at,
                    fingerprint=report.fingerprint,
                    commit=report.environment.git_commit,
                    dirty=report.environment.git_dirty,
                    experiments=len(report.experiments),
                )
            )
        return sorted(runs, key=lambda run: run.created_at)

    def resolve(self, reference: str, fingerprint: str | None = None, exclude: Path | None = None) -> Path:
        """A report path from a file/dir path, a stored run name, or 'latest'."""
        if reference == "latest":
            candidates = [
                run
                for run in self.list_runs()
                if (fingerprint is None or run.fingerprint == fingerprint)
                and (exclude is None or run.path.resolve() != exclude.resolve())
            ]
            if not candidates:
                raise ReportError(
                    f"no stored run under {self.runs_dir} from this machine (fingerprint {fingerprint}) to compare with"
                )
            return candidates[-1].path / REPORT_NAME
        direct = Path(reference)
        if direct.is_file():
            return direct
        if direct.is_dir() and (direct / REPORT_NAME).is_file():
            return direct / REPORT_NAME
        named = self.runs_dir / reference / REPORT_NAME
        if named.is_file():
            return named
        raise ReportError(
            f"baseline {reference!r} is neither a report file, a run directory nor a run in {self.runs_dir}"
        )
