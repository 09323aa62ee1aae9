"""The lab: simulated devices (containers with systemd and sshd) on this machine."""

from edgefleet.lab.devices import DeviceStatus, LabPaths, down, status, up
from edgefleet.lab.plan import ARCHES, LabDevice

__all__ = ["ARCHES", "DeviceStatus", "LabDevice", "LabPaths", "down", "status", "up"]
