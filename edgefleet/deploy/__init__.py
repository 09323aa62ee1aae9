"""Deploy a bundle and the runtime to one device, and roll back; see run.py for the path a deploy takes."""

from __future__ import annotations

from .device import DeployError, Device, now
from .gate import service_call
from .rollback import RollbackResult, revert, rollback
from .run import DEFAULT_IMAGE_TAG, DeployResult, deploy, gather_facts, prepare_release

__all__ = ["DeployResult", "DeployError", "Device", "RollbackResult", "prepare_release", "deploy", "gather_facts",
           "revert", "rollback", "service_call", "now", "DEFAULT_IMAGE_TAG"]
