"""What the experiments ran on: captured once per session and attached to every report."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_llem.hardware import nvml_devices

if TYPE_CHECKING:
    from pytest_llem.schema.environment import EnvironmentSnapshot, GpuInfo


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def tool_version() -> str:
    return _version("pytest-llem") or "0+unknown"


def cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _cuda_from_files(cuda_home: Path) -> str | None:
    json_file = cuda_home / "version.json"
    if json_file.is_file():
        try:
            data: dict[str, Any] = json.loads(json_file.read_text())
            return str(data["cuda"]["version"])
        except (ValueError, KeyError, OSError):
            pass
    txt_file = cuda_home / "version.txt"
    if txt_file.is_file():
        match = re.search(r"(\d+\.\d+(\.\d+)?)", txt_file.read_text())
        if match:
            return match.group(1)
    return None


def _torch_cuda_version() -> str | None:
    """The CUDA version torch was built with (`torch.version.cuda`), read from the installed
    `torch/version.py` without importing torch: in a session whose engines run in their own
    processes, importing torch here would cost the harness seconds for one string."""
    torch = sys.modules.get("torch")
    if torch is not None:
        cuda = getattr(getattr(torch, "version", None), "cuda", None)
        return str(cuda) if cuda else None
    try:
        spec = importlib.util.find_spec("torch")
    except (ImportError, ValueError):
        return None
    for location in (spec.submodule_search_locations or []) if spec else []:
        try:
            text = (Path(location) / "version.py").read_text()
        except OSError:
            continue
        match = re.search(r"^cuda(?:\s*:[^=]*)?\s*=\s*['\"]([0-9.]+)['\"]", text, re.M)
        return match.group(1) if match else None
    return None


def detect_cuda_version() -> tuple[str | None, str]:
    """CUDA version and where it came from: torch -> version.json/txt -> nvcc -> none."""
    from_torch = _torch_cuda_version()
    if from_torch:
        return from_torch, "torch"
    cuda_home = Path(os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or "/usr/local/cuda")
    from_files = _cuda_from_files(cuda_home)
    if from_files:
        return from_files, "version_file"
    nvcc = shutil.which("nvcc")
    if nvcc:
        try:
            out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=10).stdout
            match = re.search(r"release (\d+\.\d+)", out)
            if match:
                return match.group(1), "nvcc"
        except (OSError, subprocess.SubprocessError):
            pass
    return None, "none"


def git_state(cwd: Path | None = None) -> tuple[str | None, bool | None]:
    """(commit, dirty) of the working directory's repository, or (None, None) outside one."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, cwd=cwd, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            cwd=cwd,
            check=True,
        ).stdout
        return commit, bool(status.strip())
    except (OSError, subprocess.SubprocessError):
        return None, None


def installed_packages() -> dict[str, str]:
    found: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            found[name.lower()] = dist.version
    return dict(sorted(found.items()))


def gpu_inventory() -> tuple[list[GpuInfo], str | None]:
    from pytest_llem.schema.environment import GpuInfo

    """Every NVML-visible GPU this process may use; ([], None) where NVML is absent."""
    session = nvml_devices.open_session()
    if session is None:
        return [], None
    gpus = [
        GpuInfo(
            index=device.cuda_index,
            name=device.name(),
            uuid=device.uuid(),
            memory_total_mb=device.memory_total_mb(),
            power_limit_w=device.power_limit_w(),
            persistence_mode=device.persistence_mode(),
            has_energy_counter=device.total_energy_mj() is not None,
        )
        for device in session.visible_devices()
    ]
    return gpus, session.driver_version()


# llama.cpp's build features, read in a child: a build that uses instructions this CPU lacks
# dies on import, and must not take the session with it
_LLAMA_CPP_FEATURES = (
    "import llama_cpp; print(bytes(llama_cpp.llama_print_system_info()).decode(errors='replace').strip())"
)
LLAMA_CPP_PROBE_TIMEOUT_S = 60.0


def _start_llama_cpp_probe() -> subprocess.Popen[str] | None:
    """Start reading the installed llama.cpp build's CPU features (`llama_print_system_info()`);
    None where llama-cpp-python is not installed. Started first, read last: it overlaps the
    rest of the snapshot."""
    if _version("llama_cpp_python") is None:
        return None
    try:
        return subprocess.Popen(
            [sys.executable, "-c", _LLAMA_CPP_FEATURES],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            text=True,
        )
    except OSError:
        return None


def _llama_cpp_features(probe: subprocess.Popen[str] | None) -> str | None:
    """The probe's answer, or what stopped it ("unreadable: died with signal 4")."""
    if probe is None:
        return None
    try:
        out, _ = probe.communicate(timeout=LLAMA_CPP_PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        probe.kill()
        probe.communicate()
        return f"unreadable: no answer in {LLAMA_CPP_PROBE_TIMEOUT_S:.0f} s"
    if probe.returncode != 0:
        return f"unreadable: importing llama_cpp exited with status {probe.returncode}"
    return out.strip() or None


def snapshot() -> EnvironmentSnapshot:
    from pytest_llem.schema.environment import EnvironmentSnapshot

    llama_cpp_probe = _start_llama_cpp_probe()
    cuda_version, cuda_source = detect_cuda_version()
    gpus, driver = gpu_inventory()
    commit, dirty = git_state()
    return EnvironmentSnapshot(
        python=sys.version.split()[0],
        platform=platform.platform(),
        tool_version=tool_version(),
        torch_version=_version("torch"),
        transformers_version=_version("transformers"),
        cuda_version=cuda_version,
        cuda_version_source=cuda_source,
        driver_version=driver,
        gpus=gpus,
        cpu_model=cpu_model(),
        cpu_count=os.cpu_count(),
        git_commit=commit,
        git_dirty=dirty,
        packages=installed_packages(),
        llama_cpp_cpu_features=_llama_cpp_features(llama_cpp_probe),
    )
