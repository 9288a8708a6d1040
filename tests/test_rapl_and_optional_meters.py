import sys
import time
import types
from pathlib import Path

import pytest

from pytest_llem.config import EnergyConfig
from pytest_llem.energy import DeviceSet, codecarbon_meter, rapl, select_meter, zeus_meter
from pytest_llem.errors import MeterUnavailable
from pytest_llem.testing import SimulatedZone, simulated_powercap


def test_rapl_sums_packages_and_dram_and_survives_wraparound(tmp_path):
    zones = [
        # 40 W with a 60 J range, starting 10 J below the top: wraps 0.25 s into the window
        SimulatedZone("intel-rapl:0", "package-0", 40.0, max_energy_range_uj=60_000_000, start_uj=50_000_000),
        SimulatedZone("intel-rapl:0:0", "core", 30.0),
        SimulatedZone("intel-rapl:0:1", "dram", 5.0),
    ]
    with simulated_powercap(tmp_path, zones) as tree:
        meter = rapl.create(EnergyConfig(), DeviceSet(()))
        start = tree.now()
        meter.start()
        time.sleep(1.4)
        reading = meter.stop()
        end = tree.now()
    assert sorted(reading.info.per_device_j) == ["0-dram", "package-0"]  # core is inside package
    assert reading.info.per_device_j["package-0"] == pytest.approx(40.0 * (end - start), rel=0.02)
    assert reading.info.per_device_j["0-dram"] == pytest.approx(5.0 * (end - start), rel=0.02)
    assert reading.info.measured is True


def test_rapl_wraps_more_than_once_in_a_long_window(tmp_path):
    zone = SimulatedZone("intel-rapl:0", "package-0", 50.0, max_energy_range_uj=70_000_000, start_uj=0)
    with simulated_powercap(tmp_path, [zone]) as tree:
        meter = rapl.RaplMeter(rapl.discover_zones(tmp_path), poll_interval_s=0.2)
        start = tree.now()
        meter.start()
        time.sleep(3.2)  # 160 J through a 70 J counter: two wraps
        reading = meter.stop()
        end = tree.now()
    assert reading.energy_j == pytest.approx(50.0 * (end - start), rel=0.02)


def test_unreadable_rapl_counter_names_the_permission_fix(tmp_path, monkeypatch):
    zone = SimulatedZone("intel-rapl:0", "package-0", 10.0)
    with simulated_powercap(tmp_path, [zone]):
        real_read = Path.read_text

        def deny(self, *args, **kwargs):
            if self.name == "energy_uj":
                raise PermissionError(13, "Permission denied")
            return real_read(self, *args, **kwargs)

        monkeypatch.setattr(Path, "read_text", deny)
        with pytest.raises(MeterUnavailable) as info:
            rapl.create(EnergyConfig(), DeviceSet(()))
    assert "is not readable" in str(info.value) and "chmod a+r" in str(info.value)


def test_no_powercap_tree_is_unavailable(tmp_path, monkeypatch):
    monkeypatch.setenv("LLEM_POWERCAP_ROOT", str(tmp_path / "absent"))
    with pytest.raises(MeterUnavailable, match="no RAPL zones"):
        rapl.create(EnergyConfig(), DeviceSet(()))


def test_auto_on_cpu_without_sensors_falls_back_to_estimate_with_a_warning(tmp_path, monkeypatch):
    monkeypatch.setenv("LLEM_POWERCAP_ROOT", str(tmp_path / "absent"))
    meter, warnings = select_meter(EnergyConfig(), DeviceSet(()))
    assert meter.name == "estimate"
    assert [w.flag for w in warnings] == ["energy_estimated"]
    assert "rapl: no RAPL zones" in warnings[0].message


def test_estimate_records_its_assumption_and_is_never_measured():
    meter, _ = select_meter(EnergyConfig(meter="estimate", watts_per_core=7.0), DeviceSet(()))
    meter.start()
    sum(i * i for i in range(200_000))
    reading = meter.stop()
    assert reading.info.measured is False and reading.info.source == "estimate"
    assert reading.info.assumptions["watts_per_busy_core"] == 7.0
    assert reading.energy_j == pytest.approx(7.0 * reading.info.assumptions["cpu_seconds"])
    assert "assumed, not measured" in reading.info.assumptions["basis"]


def _fake_zeus(monkeypatch, gpus_found, cpus_found):
    """A stand-in for zeus.monitor that finds the given devices, like Zeus does on init."""

    class Measurement:
        def __init__(self, gpus, cpus):
            self.time = 1.0
            self.gpu_energy = {i: 10.0 * (i + 1) for i in gpus}
            self.cpu_energy = dict.fromkeys(cpus, 3.0) or None
            self.dram_energy = None

    class ZeusMonitor:
        def __init__(self, gpu_indices=None, cpu_indices=None):
            # like Zeus: None means every device found, a list means exactly those
            self.gpu_indices = list(gpus_found) if gpu_indices is None else list(gpu_indices)
            self.cpu_indices = list(cpus_found) if cpu_indices is None else list(cpu_indices)
            if not gpus_found:
                self.gpu_indices = []
            self.windows = []

        def begin_window(self, key):
            self.windows.append(key)

        def end_window(self, key):
            assert key in self.windows
            return Measurement(self.gpu_indices, self.cpu_indices)

    zeus = types.ModuleType("zeus")
    monitor = types.ModuleType("zeus.monitor")
    monitor.ZeusMonitor = ZeusMonitor
    monkeypatch.setitem(sys.modules, "zeus", zeus)
    monkeypatch.setitem(sys.modules, "zeus.monitor", monitor)


def test_zeus_that_finds_no_device_is_unavailable_not_zero(monkeypatch):
    _fake_zeus(monkeypatch, [], [])
    with pytest.raises(MeterUnavailable, match="Zeus found no GPU and no RAPL CPU"):
        zeus_meter.create(EnergyConfig(), DeviceSet(()))


def test_zeus_windows_give_per_device_energy_and_win_auto(monkeypatch):
    _fake_zeus(monkeypatch, [0], [0])
    meter, warnings = select_meter(EnergyConfig(), DeviceSet((0,)))
    assert meter.name == "zeus" and warnings == []
    meter.start()
    reading = meter.stop()
    assert reading.info.per_device_j == {"gpu0": 10.0}  # a GPU run: the GPUs in use, not the CPU
    assert reading.energy_j == 10.0
    cpu_meter, _ = select_meter(EnergyConfig(), DeviceSet(()))
    assert cpu_meter.name == "zeus"
    cpu_meter.start()
    assert cpu_meter.stop().info.per_device_j == {"cpu0": 3.0}


def test_missing_optional_meters_say_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "zeus", None)
    monkeypatch.setitem(sys.modules, "zeus.monitor", None)
    monkeypatch.setitem(sys.modules, "codecarbon", None)
    with pytest.raises(MeterUnavailable, match=r"pip install 'pytest-llem\[zeus\]'"):
        zeus_meter.create(EnergyConfig(), DeviceSet(()))
    with pytest.raises(MeterUnavailable, match=r"pip install 'pytest-llem\[codecarbon\]'"):
        codecarbon_meter.create(EnergyConfig(), DeviceSet(()))


def test_codecarbon_uses_the_offline_tracker_and_labels_modelled_figures(monkeypatch):
    created = []

    class CPU:
        def __init__(self, mode):
            self._mode = mode

    class OfflineEmissionsTracker:
        mode = "constant"

        def __init__(self, **kwargs):
            created.append(kwargs)
            self._hardware = [CPU(OfflineEmissionsTracker.mode)]

        def start(self):
            pass

        def stop(self):
            ram = 0.0 if OfflineEmissionsTracker.mode == "intel_rapl" else 1e-6
            self.final_emissions_data = types.SimpleNamespace(cpu_energy=2e-6, gpu_energy=0.0, ram_energy=ram)

    module = types.ModuleType("codecarbon")
    module.OfflineEmissionsTracker = OfflineEmissionsTracker
    monkeypatch.setitem(sys.modules, "codecarbon", module)
    meter = codecarbon_meter.create(EnergyConfig(), DeviceSet(()))
    meter.start()
    modelled = meter.stop()
    assert modelled.info.measured is False and modelled.energy_j == pytest.approx(3e-6 * 3.6e6)
    OfflineEmissionsTracker.mode = "intel_rapl"
    meter.start()
    counted = meter.stop()
    assert counted.info.measured is True
    assert "country_iso_code" in created[0]  # the offline tracker needs no geolocation lookup
