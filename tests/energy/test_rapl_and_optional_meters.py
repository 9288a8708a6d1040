"""RAPL against a simulated powercap tree on a simulated clock (exact, no waiting), the
estimate meter, and real CodeCarbon's OfflineEmissionsTracker (no network)."""

import sys
from pathlib import Path
from typing import Any

import pytest
from factories import simulated_clock

from pytest_llem.energy import DeviceSet, codecarbon_meter, rapl, select_meter, zeus_meter
from pytest_llem.schema.config import EnergyConfig
from pytest_llem.schema.errors import MeterUnavailable
from pytest_llem.testing import SimulatedZone, simulated_powercap


def test_rapl_sums_packages_and_dram_and_survives_wraparound(tmp_path: Path) -> None:
    zones = [
        # 40 W with a 60 J range, starting 10 J below the top: wraps 0.25 s into the window
        SimulatedZone("intel-rapl:0", "package-0", 40.0, max_energy_range_uj=60_000_000, start_uj=50_000_000),
        SimulatedZone("intel-rapl:0:0", "core", 30.0),
        SimulatedZone("intel-rapl:0:1", "dram", 5.0),
    ]
    with simulated_powercap(tmp_path, zones) as tree:
        meter = rapl.create(EnergyConfig(), DeviceSet(()))
        meter.start()
        simulated_clock(tree.clock).advance(1.4)
        reading = meter.stop()
    assert sorted(reading.info.per_device_j) == ["0-dram", "package-0"]  # core is inside package
    assert reading.info.per_device_j["package-0"] == pytest.approx(40.0 * 1.4)
    assert reading.info.per_device_j["0-dram"] == pytest.approx(5.0 * 1.4)
    assert reading.info.measured is True
    assert reading.start_s == 0.0 and reading.end_s == pytest.approx(1.4)


def test_rapl_reads_mid_window_through_a_wrap_and_agrees_with_the_window(tmp_path: Path) -> None:
    zones = [
        SimulatedZone("intel-rapl:0", "package-0", 40.0, max_energy_range_uj=60_000_000, start_uj=50_000_000),
        SimulatedZone("intel-rapl:0:1", "dram", 5.0),
    ]
    with simulated_powercap(tmp_path, zones) as tree:
        meter = rapl.create(EnergyConfig(), DeviceSet(()))
        meter.start()
        assert meter.read_j() == 0.0
        simulated_clock(tree.clock).advance(0.5)  # past the package counter's wrap
        middle = meter.read_j()
        simulated_clock(tree.clock).advance(0.9)
        reading = meter.stop()
    assert middle == pytest.approx(45.0 * 0.5)
    assert reading.energy_j == pytest.approx(45.0 * 1.4)


def test_rapl_leaves_the_platform_psys_zone_out_of_the_figure_and_records_it(tmp_path: Path) -> None:
    zones = [
        SimulatedZone("intel-rapl:0", "package-0", 30.0),
        SimulatedZone("intel-rapl:0:0", "core", 20.0),
        SimulatedZone("intel-rapl:0:1", "dram", 4.0),
        SimulatedZone("intel-rapl:1", "psys", 70.0),  # the platform: packages, DRAM and more
    ]
    with simulated_powercap(tmp_path, zones) as tree:
        meter = rapl.create(EnergyConfig(), DeviceSet(()))
        meter.start()
        simulated_clock(tree.clock).advance(2.0)
        reading = meter.stop()
    assert reading.info.per_device_j == {"package-0": pytest.approx(60.0), "0-dram": pytest.approx(8.0)}
    assert reading.energy_j == pytest.approx(68.0)  # not 208 J: psys overlaps the others
    assert reading.info.assumptions["psys_j"] == {"psys": pytest.approx(140.0)}


def test_a_psys_zone_alone_is_not_a_cpu_meter(tmp_path: Path) -> None:
    with (
        simulated_powercap(tmp_path, [SimulatedZone("intel-rapl:0", "psys", 70.0)]),
        pytest.raises(MeterUnavailable, match="no RAPL zones"),
    ):
        rapl.create(EnergyConfig(), DeviceSet(()))


def test_rapl_wraps_more_than_once_in_a_long_window(tmp_path: Path) -> None:
    zone = SimulatedZone("intel-rapl:0", "package-0", 50.0, max_energy_range_uj=70_000_000, start_uj=0)
    with simulated_powercap(tmp_path, [zone]) as tree:
        meter = rapl.RaplMeter(rapl.discover_zones(tmp_path), poll_interval_s=0.2)
        meter.start()
        simulated_clock(tree.clock).advance(3.2)  # 160 J through a 70 J counter: two wraps
        reading = meter.stop()
    assert reading.energy_j == pytest.approx(50.0 * 3.2)


def test_unreadable_rapl_counter_names_the_permission_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    zone = SimulatedZone("intel-rapl:0", "package-0", 10.0)
    with simulated_powercap(tmp_path, [zone]):
        real_read = Path.read_text

        def deny(self: Path, *args: Any, **kwargs: Any) -> str:
            if self.name == "energy_uj":
                raise PermissionError(13, "Permission denied")
            return real_read(self, *args, **kwargs)

        monkeypatch.setattr(Path, "read_text", deny)
        with pytest.raises(MeterUnavailable) as info:
            rapl.create(EnergyConfig(), DeviceSet(()))
    assert "is not readable" in str(info.value) and "chmod a+r" in str(info.value)


def test_no_powercap_tree_is_unavailable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLEM_POWERCAP_ROOT", str(tmp_path / "absent"))
    with pytest.raises(MeterUnavailable, match="no RAPL zones"):
        rapl.create(EnergyConfig(), DeviceSet(()))


def test_auto_on_cpu_without_sensors_falls_back_to_estimate_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLEM_POWERCAP_ROOT", str(tmp_path / "absent"))
    # real Zeus reads /sys/class/powercap itself: on a bare-metal machine with RAPL it would
    # be picked, so this machine-independent test takes it away
    monkeypatch.setitem(sys.modules, "zeus", None)
    monkeypatch.setitem(sys.modules, "zeus.monitor", None)
    meter, warnings = select_meter(EnergyConfig(), DeviceSet(()))
    assert meter.name == "estimate"
    assert [w.flag for w in warnings] == ["energy_estimated"]
    assert "rapl: no RAPL zones" in warnings[0].message


def test_estimate_records_its_assumption_and_is_never_measured() -> None:
    meter, _ = select_meter(EnergyConfig(meter="estimate", watts_per_core=7.0), DeviceSet(()))
    meter.start()
    sum(i * i for i in range(200_000))
    reading = meter.stop()
    assert reading.info.measured is False and reading.info.source == "estimate"
    assert reading.info.assumptions["watts_per_busy_core"] == 7.0
    assert reading.energy_j == pytest.approx(7.0 * reading.info.assumptions["cpu_seconds"])
    assert "assumed, not measured" in reading.info.assumptions["basis"]


def test_missing_optional_meters_say_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "zeus", None)
    monkeypatch.setitem(sys.modules, "zeus.monitor", None)
    monkeypatch.setitem(sys.modules, "codecarbon", None)
    with pytest.raises(MeterUnavailable, match=r"pip install 'pytest-llem\[zeus\]'"):
        zeus_meter.create(EnergyConfig(), DeviceSet(()))
    with pytest.raises(MeterUnavailable, match=r"pip install 'pytest-llem\[codecarbon\]'"):
        codecarbon_meter.create(EnergyConfig(), DeviceSet(()))


def test_codecarbon_runs_the_real_offline_tracker_and_labels_modelled_figures() -> None:
    """Real CodeCarbon: the offline tracker (no geolocation lookup). This machine has no RAPL,
    so CodeCarbon models CPU and RAM power: the figure must say it is not measured."""
    meter = codecarbon_meter.create(EnergyConfig(meter="codecarbon"), DeviceSet(()))
    meter.start()
    sum(i * i for i in range(100_000))
    reading = meter.stop()
    assert reading.info.source == "codecarbon" and reading.info.method == "OfflineEmissionsTracker"
    assert reading.info.measured is False
    assert reading.info.assumptions["cpu_from_counter"] is False
    assert set(reading.info.per_device_j) == {"cpu", "gpu", "ram"}
    assert reading.energy_j == pytest.approx(sum(reading.info.per_device_j.values()))
    assert reading.energy_j is not None and reading.energy_j > 0


def test_codecarbon_tracker_stops_when_a_window_is_abandoned() -> None:
    meter = codecarbon_meter.create(EnergyConfig(meter="codecarbon"), DeviceSet(()))
    meter.start()
    tracker = meter._tracker
    meter.close()  # an error path: no reading, but CodeCarbon's timers are cancelled
    schedulers = [tracker._scheduler, tracker._scheduler_monitor_power]
    assert all(s is None or s._stopped for s in schedulers)
    assert all(s is None or s._timer is None or s._timer.finished.is_set() for s in schedulers)
