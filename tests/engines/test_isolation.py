"""Engines in a process of their own (`pytest_llem.engines.isolated`): the real engine answers
through the host, and a host that dies (a segfault, the OOM killer's SIGKILL) is one failed
experiment while the session, its report, summary, HTML and JUnit go on.

The suite runs engines in-process (tests/conftest.py sets LLEM_ISOLATION=none); these tests
remove that, so the default is what runs.
"""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from pytest_llem import build_config
from pytest_llem.engines.isolated import IsolatedBackend, _last_frame
from pytest_llem.measure.session import ExperimentSession
from pytest_llem.schema.errors import ConfigError, EngineCrashed
from pytest_llem.schema.registry import ENGINES

TINY = {
    "model": "tiny",
    "n_prompts": 2,
    "max_new_tokens": 4,
    "repeats": 2,
    "warmup": {"n_warmup": 1},
    "min_window_s": 0,  # one pass per window on both sides, so their counts compare exactly
    "energy": {"meter": "estimate", "baseline_s": 0},
}

# A third-party engine package, registered through the `pytest_llem.engines` entry point as a
# user's would be: the transformers engine on the tiny model, dying inside the first
# measurement window (the only `generate` calls given an observer are a window's).
CRASHING_ENGINES = """
import ctypes
import os
import signal

from pytest_llem.engines.transformers_backend import TransformersBackend


class _Crashing(TransformersBackend):
    how = ""

    def generate(self, loaded, batch, max_new_tokens, fixed_length, observer=None):
        if observer is not None:
            if self.how == "segfault":
                ctypes.string_at(0)  # reads address 0: SIGSEGV, as a native kernel bug would
            os.kill(os.getpid(), signal.SIGKILL)  # as the kernel's OOM killer does
        return super().generate(loaded, batch, max_new_tokens, fixed_length, observer=observer)


class Segfaulting(_Crashing):
    how = "segfault"


class OomKilled(_Crashing):
    how = "sigkill"
"""

ENTRY_POINTS = """
[pytest_llem.engines]
segfaulting = crashing_engines:Segfaulting
oom_killed = crashing_engines:OomKilled
"""

SESSION = """
import psutil
import pytest

SETTINGS = dict(model="tiny", n_prompts=2, max_new_tokens=4, repeats=1, warmup=1)


@pytest.mark.llem(**SETTINGS)
def test_first(llem):
    assert llem.run().status == "passed"


@pytest.mark.llem(**SETTINGS, engine="{engine}")
def test_second(llem):
    llem.run()


@pytest.mark.llem(**SETTINGS)
def test_third(llem):
    assert llem.run().status == "passed"
    # what this session started: checked after it ended, that none outlived it
    with open("children.txt", "w") as out:
        out.write(" ".join(str(p.pid) for p in psutil.Process().children(recursive=True)))
"""


@pytest.fixture
def default_isolation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LLEM_ISOLATION", raising=False)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_an_isolated_engine_measures_what_the_in_process_engine_does(default_isolation: None) -> None:
    config = build_config(("test", TINY))
    here = ExperimentSession(isolation="none")
    isolated = ExperimentSession()
    try:
        local = here.run(config)
        remote = isolated.run(config)
        backend = isolated.backend("transformers")
        assert isinstance(backend, IsolatedBackend)
        host_pid = backend.host_pid
        assert host_pid is not None and host_pid != os.getpid() and _alive(host_pid)
    finally:
        here.close()
        isolated.close()
    assert not _alive(host_pid), "the engine host outlived its session"
    assert local.status == remote.status == "passed", (local.error, remote.error)
    # the same work, counted the same way: tokens, requests and the window's phases
    assert [r.output_tokens for r in remote.repeats] == [r.output_tokens for r in local.repeats]
    assert remote.input_tokens == local.input_tokens
    assert remote.engine_settings == local.engine_settings
    assert remote.phases is not None and local.phases is not None
    assert remote.phases.prefill_s is not None and remote.phases.decode_s is not None
    assert (
        remote.flops is not None
        and local.flops is not None
        and remote.flops.non_embedding_parameters == local.flops.non_embedding_parameters
    )
    # the estimate meter counts the host's CPU time, as it counts vLLM's engine core
    assert remote.energy_j is not None and remote.energy_j > 0


def test_llem_load_gives_the_caller_a_model_in_its_own_process(default_isolation: None) -> None:
    config = build_config(("test", TINY))
    session = ExperimentSession()
    try:
        preflight = session.preflight(config)
        loaded = session.load_model(config, preflight, in_process=True)
        assert loaded.model is not None and hasattr(loaded.model, "generate")
        assert session.backend("transformers", in_process=True) is not session.backend("transformers")
    finally:
        session.close()


def test_an_unknown_isolation_mode_names_the_setting_and_the_fix() -> None:
    with pytest.raises(ConfigError, match=r"isolation='thread'.*--llem-isolation.*use process or none"):
        ExperimentSession(isolation="thread")


def test_a_crash_message_quotes_the_innermost_frame_of_the_fatal_error(tmp_path: Path) -> None:
    log = tmp_path / "engine.log"
    log.write_text(
        "llama_model_loader: loaded meta data\n"
        "Fatal Python error: Segmentation fault\n\n"
        "Current thread 0x00007f (most recent call first):\n"
        '  File "/venv/lib/python3.11/site-packages/llama_cpp/_internals.py", line 329 in decode\n'
        '  File "/venv/lib/python3.11/site-packages/llama_cpp/llama.py", line 640 in eval\n'
    )
    assert _last_frame(log) == "llama_cpp/_internals.py:329 in decode"
    crash = EngineCrashed("llama_cpp", "SIGSEGV", "generate", _last_frame(log), "an AMX build", str(log))
    assert str(crash.with_step("window 1")).startswith(
        "llama_cpp died with SIGSEGV in window 1 (during its 'generate' call, at "
        "llama_cpp/_internals.py:329 in decode); likely cause: an AMX build; the engine's log: "
    )


@pytest.mark.parametrize(("engine", "signal_name"), [("segfaulting", "SIGSEGV"), ("oom_killed", "SIGKILL")])
def test_an_engine_that_dies_mid_window_fails_one_experiment_and_the_session_goes_on(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    default_isolation: None,
    engine: str,
    signal_name: str,
) -> None:
    pytester.makepyfile(crashing_engines=CRASHING_ENGINES)
    dist_info = pytester.mkdir("crashing_engines-1.0.dist-info")
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: crashing-engines\nVersion: 1.0\n")
    (dist_info / "entry_points.txt").write_text(ENTRY_POINTS)
    monkeypatch.setenv("PYTHONPATH", str(pytester.path))
    pytester.makepyfile(test_session=SESSION.format(engine=engine))

    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--llem-json=report.json", "--llem-html=report.html", "--junitxml=junit.xml"
    )

    assert result.ret == 1  # a failed test, not a crashed pytest (which exits with the signal)
    result.assert_outcomes(passed=2, failed=1)
    expected = f"{engine} died with {signal_name} in window 1 (during its 'generate' call"
    result.stdout.fnmatch_lines([f"*{expected}*"])
    result.stdout.fnmatch_lines(
        ["*pytest-llem*", "*test_first*passed*", "*test_second*error*", "*test_third*passed*"]
    )

    report = json.loads((pytester.path / "report.json").read_text())
    experiments = {e["nodeid"].rpartition("::")[2]: e for e in report["experiments"]}
    assert [experiments[name]["status"] for name in ("test_first", "test_second", "test_third")] == [
        "passed",
        "error",
        "passed",
    ]
    assert expected in experiments["test_second"]["error"]
    if signal_name == "SIGSEGV":  # faulthandler's dump in the host's log names the Python frame
        assert "at ctypes/__init__.py:" in experiments["test_second"]["error"]
    html = (pytester.path / "report.html").read_text()
    assert all(name in html for name in ("test_first", "test_second", "test_third"))
    cases = ElementTree.parse(pytester.path / "junit.xml").getroot().iter("testcase")
    outcomes = {case.get("name"): [child.tag for child in case] for case in cases}
    assert set(outcomes) == {"test_first", "test_second", "test_third"}
    assert "failure" in outcomes["test_second"] and "failure" not in outcomes["test_third"]

    started = [int(pid) for pid in (pytester.path / "children.txt").read_text().split()]
    assert started, "the session ran its engines in processes of their own"
    assert not [pid for pid in started if _alive(pid)], "a process the session started outlived it"


def test_the_crash_hint_of_a_llama_cpp_build_names_amx_and_the_portable_rebuild() -> None:
    from pytest_llem.engines.llama_cpp_backend import build_crash_hint

    native = "CPU : SSE3 = 1 | AVX2 = 1 | AVX512 = 1 | AVX512_VNNI = 1 | AMX_INT8 = 1 | OPENMP = 1 |"
    hint = build_crash_hint(native)
    assert hint is not None and "AMX_INT8" in hint and "-DGGML_NATIVE=OFF" in hint
    assert build_crash_hint("CPU : SSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 |") is None


# A third-party engine whose release fails, after leaving a mark of the process it ran in.
FAILING_RELEASE = """
import os
from pathlib import Path

from pytest_llem.engines.transformers_backend import TransformersBackend


class FailingRelease(TransformersBackend):
    def release(self, loaded):
        Path(__file__).with_name("released.txt").write_text(str(os.getpid()))
        raise RuntimeError("the device is busy")
"""


@pytest.fixture
def failing_release_engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """`failing_release`, registered through the entry point as a user's engine would be."""
    (tmp_path / "failing_release.py").write_text(FAILING_RELEASE)
    dist_info = tmp_path / "failing_release-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: failing-release\nVersion: 1.0\n")
    (dist_info / "entry_points.txt").write_text(
        "[pytest_llem.engines]\nfailing_release = failing_release:FailingRelease\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    ENGINES.refresh()
    yield tmp_path
    monkeypatch.undo()
    ENGINES.refresh()


def test_a_host_releases_its_models_as_it_exits_and_a_failed_release_is_a_warning(
    failing_release_engine: Path, default_isolation: None
) -> None:
    config = build_config(("test", {**TINY, "engine": "failing_release"}))
    session = ExperimentSession()
    try:
        assert session.run(config).status == "passed"
        backend = session.backend("failing_release")
        host_pid = backend.host_pid if isinstance(backend, IsolatedBackend) else None
        assert host_pid is not None
        session.begin_close()  # asks the host to release and exit, and returns at once
        with pytest.warns(
            RuntimeWarning,
            match=r"^pytest-llem: releasing the failing_release model cpu failed: RuntimeError: the device is busy$",
        ):
            session.close()
    finally:
        session.close()
    # the model was released in its host, as the host exited, and the host is gone
    assert (failing_release_engine / "released.txt").read_text() == str(host_pid)
    assert not _alive(host_pid)
