"""What the experiments ran on: the record attached to every report (captured by
`pytest_llem.hardware.environment.snapshot`)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class GpuInfo(BaseModel):
    index: int
    name: str | None = None
    uuid: str | None = None
    memory_total_mb: float | None = None
    power_limit_w: float | None = None
    persistence_mode: bool | None = None
    has_energy_counter: bool | None = None


class EnvironmentSnapshot(BaseModel):
    python: str
    platform: str
    tool_version: str
    torch_version: str | None = None
    transformers_version: str | None = None
    cuda_version: str | None = None
    cuda_version_source: str = "none"
    driver_version: str | None = None
    gpus: list[GpuInfo] = Field(default_factory=list)
    cpu_model: str | None = None
    cpu_count: int | None = None
    git_commit: str | None = None
    git_dirty: bool | None = None
    packages: dict[str, str] = Field(default_factory=dict)
    # llama_print_system_info() of the installed llama.cpp build: its kernels (AVX2, AVX-512,
    # AMX) change every llama.cpp figure, and a build for another CPU can crash on this one
    llama_cpp_cpu_features: str | None = None
