"""Energy meters behind one protocol; `select_meter` picks one (or `auto`)."""

from pytest_llem.energy.base import DeviceSet, EnergyMeter, EnergyReading
from pytest_llem.energy.selection import select_meter
from pytest_llem.schema.registry import METERS

__all__ = ["METERS", "DeviceSet", "EnergyMeter", "EnergyReading", "select_meter"]
