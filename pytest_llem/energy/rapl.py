"""The `rapl` meter: Linux powercap counters of CPU packages (and DRAM where present).

`energy_uj` wraps at `max_energy_range_uj`; the meter polls once a second and adds each
delta modulo the range, so a window may span any number of wraps.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

from pytest_llem.config import EnergyConfig
from pytest_llem.energy.base import DeviceSet, EnergyReading, Poller
from pytest_llem.errors import MeterUnavailable
from pytest_llem.results import EnergyInfo

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

    def read_uj(self) -> int:
        return int(self.energy_path.read_text().strip())


def discover_zones(root: Path) -> list[RaplZone]:
    """Package zones (intel-rapl:N) and their DRAM subzones; core/uncore are inside package."""
    zones: list[RaplZone] = []
    for zone_dir in sorted(root.glob("intel-rapl:*")):
        parts = zone_dir.name.split(":")
        name = (zone_dir / "name").read_text().strip() if (zone_dir / "name").is_file() else zone_dir.name
        is_package = len(parts) == 2
        if not (is_package or name == "dram"):
            continue
        max_path = zone_dir / "max_energy_range_uj"
        max_range = int(max_path.read_text().strip()) if max_path.is_file() else 2**32
        label = name if is_package else f"{zone_dir.name.split(':')[1]}-dram"
        zones.append(RaplZone(label, zone_dir / "energy_uj", max_range))
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
        self._poller: Poller | None = None

    def _poll(self) -> None:
        with self._lock:
            for zone in self._zones:
                value = zone.read_uj()
                previous = self._last[zone.label]
                delta = value - previous if value >= previous else zone.max_range_uj - previous + value
                self._total_uj[zone.label] += delta
                self._last[zone.label] = value

    def start(self) -> None:
        self._last = {zone.label: zone.read_uj() for zone in self._zones}
        self._total_uj = dict.fromkeys(self._last, 0)
        self._poller = Poller(self._interval_s, self._poll, "llem-rapl-meter")
        self._poller.start()

    def stop(self) -> EnergyReading:
        if self._poller is not None:
            self._poller.stop()
            self._poller = None
        self._poll()
        per_zone = {label: uj / 1e6 for label, uj in self._total_uj.items()}
        info = EnergyInfo(
            source="rapl",
            measured=True,
            method="powercap counter deltas with wraparound",
            assumptions={"zones": sorted(per_zone), "covers": "CPU packages and DRAM only, not GPUs"},
            per_device_j=per_zone,
        )
        return EnergyReading(energy_j=sum(per_zone.values()), info=info)

    def close(self) -> None:
        if self._poller is not None:
            self._poller.stop()
            self._poller = None


def create(config: EnergyConfig, devices: DeviceSet) -> RaplMeter:
    root = powercap_root()
    zones = discover_zones(root) if root.is_dir() else []
    if not zones:
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
