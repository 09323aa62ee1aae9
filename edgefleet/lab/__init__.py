"""The lab: simulated devices (containers with systemd and sshd) on this machine."""

from edgefleet.lab.devices import DeviceStatus, LabBusy, LabPaths, down, session, status, up
from edgefleet.lab.plan import ARCHES, LabDevice

__all__ = ["ARCHES", "DeviceStatus", "LabBusy", "LabDevice", "LabPaths", "down", "session", "status", "up"]
