"""How the lifecycle tells whoever watches what it is doing now (pre-flight and model
conversion, model loading, idle baseline, warmup i of n, thermal floor countdown, repeat i of
n). The renderers live in the pytest layer (`pytest_llem.plugin.progress`); the core only
knows this protocol, so it runs without pytest or a terminal."""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    """What the lifecycle calls. `step`/`total`: e.g. repeat 2 of 3; `countdown_s`: a wait of
    known length (thermal floor), shown as time left."""

    def update(
        self, stage: str, step: int | None = None, total: int | None = None, countdown_s: float | None = None
    ) -> None: ...


class Silent:
    """The default: no output. A plain-Python session stays quiet unless given a renderer."""

    def update(
        self, stage: str, step: int | None = None, total: int | None = None, countdown_s: float | None = None
    ) -> None:
        pass


SILENT = Silent()


class Reports(Protocol):
    """What reports progress: an `ExperimentSession`."""

    progress: Progress
