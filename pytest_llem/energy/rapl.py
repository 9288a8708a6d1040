"""The `rapl` meter: Linux powercap counters of CPU packages (and DRAM where present).

What is summed: each `package-N` zone (`intel-rapl:N`, which already contains its core and
uncore subzones) and each package's `dram` subzone. A top-level `psys` zone (platform: the
whole SoC/board as the firmware sees it, present on many laptops and some desktops) overlaps
the packages and DRAM, so adding it would count them twice: it is left out of the figure and
its own energy is recorded in the reading's assumptions (`psys_j`) for reference.

`energy_uj` wraps at `max_energy_range_uj`; the meter polls once a second (on
`pytest_llem.hardware.clock`) and adds each delta modulo the range, so a window may span any number of
wraps.
"""

from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from pytest_llem.energy.base import DeviceSet, EnergyReading
from pytest_llem.hardware import clock as clocks
from pytest_llem.schema.config import EnergyConfig
from pytest_llem.schema.errors import MeasurementError, MeterUnavailable
from pytest_llem.schema.results import EnergyInfo

DEFAULT_POWERCAP_ROOT = Path("/sys/class/powercap")
PERMISSION_FIX = (
    "since Linux 5.10 energy_uj is root-only: run `sudo chmod a+r /sys/class/powercap/intel-rapl:*/energy_uj "
    "/sys/class/powercap/intel-rapl:*:*/energy_uj` (until reboot) or run as root"
)


def powercap_root() -> Path:
    return Path(os.environ.get("LLEM_POWERCAP_ROOT", DEFAULT_POWERCAP_ROOT))


@dataclass
class RaplZone:
    label: str
    energy_path: Path
    max_range_uj: int
    summed: bool = True  # False for psys: read for reference, never added to the figure

    def read_uj(self) -> int:
        return int(self.energy_path.read_text().strip())


def discover_zones(root: Path) -> list[RaplZone]:
    """Package zones (intel-rapl:N) and their DRAM subzones; core/uncore are inside package.
    A top-level `psys` zone is kept apart (summed=False): it overlaps everything else."""
    zones: list[RaplZone] = []
    for zone_dir in sorted(root.glob("intel-rapl:*")):
        parts = zone_dir.name.split(":")
        name = (zone_dir / "name").read_text().strip() if (zone_dir / "name").is_file() else zone_dir.name
        top_level = len(parts) == 2
        if not (top_level or name == "dram"):
            continue
        max_path = zone_dir / "max_energy_range_uj"
        max_range = int(max_path.read_text().strip()) if max_path.is_file() else 2**32
        label = name if top_level else f"{parts[1]}-dram"
        summed = not (top_level and name.startswith("psys"))
        zones.append(RaplZone(label, zone_dir / "energy_uj", max_range, summed))
    return zones


class RaplMeter:
    name = "rapl"
    measured = True

    def __init__(self, zones: list[RaplZone], poll_interval_s: float = 1.0) -> None:
        self._zones = zones
        self._interval_s = poll_interval_s
        self._lock = threading.Lock()
        self._last: dict[str, int] = {}
        self._total_uj: dict[str, int] = {}
        self._ticker: clocks.Ticker | None = None
        self._start_s = 0.0

    def _poll(self) -> None:
        with self._lock:
            for zone in self._zones:
                value = zone.read_uj()
                previous = self._last[zone.label]
                delta = value - previous if value >= previous else zone.max_range_uj - previous + value
                self._total_uj[zone.label] += delta
                self._last[zone.label] = value

    def start(self) -> None:
        self.close()
        clock = clocks.current()
        try:
            self._last = {zone.label: zone.read_uj() for zone in self._zones}
        except (OSError, ValueError) as exc:
            raise MeasurementError(f"a RAPL counter could not be read at window start ({exc})") from exc
        self._start_s = clock.now()
        self._total_uj = dict.fromkeys(self._last, 0)
        # the first tick is now: it reads the same values again and adds nothing
        self._ticker = clock.every(self._interval_s, self._poll, "llem-rapl-meter")
        self._ticker.start()

    def read_j(self) -> float | None:
        """The summed zones' energy since `start()`, read now (with wraparound)."""
        try:
            self._poll()
        except (OSError, ValueError):
            return None  # stop() reads again and reports the failure
        with self._lock:
            summed = {z.label for z in self._zones if z.summed}
            return sum(uj for label, uj in self._total_uj.items() if label in summed) / 1e6

    def stop(self) -> EnergyReading:
        end_s = clocks.current().now()
        ticker, self._ticker = self._ticker, None
        try:
            if ticker is not None:
                ticker.stop()
            self._poll()
        except (OSError, ValueError) as exc:
            raise MeasurementError(f"a RAPL counter could not be read during the window ({exc})") from exc
        summed = {z.label for z in self._zones if z.summed}
        per_zone = {label: uj / 1e6 for label, uj in self._total_uj.items() if label in summed}
        assumptions: dict[str, object] = {
            "zones": sorted(per_zone),
            "covers": "CPU packages and DRAM only, not GPUs",
        }
        platform = {label: uj / 1e6 for label, uj in self._total_uj.items() if label not in summed}
        if platform:
            assumptions["psys_j"] = platform
            assumptions["psys_note"] = "platform zone overlaps packages and DRAM: not added to energy_j"
        info = EnergyInfo(
            source="rapl",
            measured=True,
            method="powercap counter deltas with wraparound",
            assumptions=assumptions,
            per_device_j=per_zone,
        )
        return EnergyReading(sum(per_zone.values()), info, start_s=self._start_s, end_s=end_s)

    def close(self) -> None:
        ticker, self._ticker = self._ticker, None
        if ticker is not None:
            with contextlib.suppress(Exception):  # an error path already has its error
                ticker.stop()


def create(config: EnergyConfig, devices: DeviceSet) -> RaplMeter:
    root = powercap_root()
    zones = discover_zones(root) if root.is_dir() else []
    if not any(zone.summed for zone in zones):
        raise MeterUnavailable(
            "rapl",
            f"no RAPL zones under {root} (not bare-metal Linux, or the driver is not loaded)",
            "`sudo modprobe intel_rapl_common` on bare metal, or use --llem-energy=estimate",
        )
    for zone in zones:
        try:
            zone.read_uj()
        except PermissionError:
            raise MeterUnavailable("rapl", f"{zone.energy_path} is not readable", PERMISSION_FIX) from None
        except (OSError, ValueError) as exc:
            raise MeterUnavailable(
                "rapl", f"{zone.energy_path} could not be read ({exc})", PERMISSION_FIX
            ) from None
    return RaplMeter(zones)
