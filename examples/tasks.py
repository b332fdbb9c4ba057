"""The demo's tasks: provision a server with a volume, and undo it all when a step fails.

Imported by the client (examples/demo.py) and by every worker (`workerflow worker examples.tasks`).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from workerflow import Failure, Task, task

log = logging.getLogger(__name__)


class CreateVolume(Task):
    """Creates a volume of ``size_gb``, reporting progress as it goes."""

    provides = "volume_id"

    def execute(self, size_gb: int) -> str:
        for step in range(1, 5):
            time.sleep(0.05)  # stands in for real work
            self.update_progress(step / 4, step=step)
        return f"vol-{size_gb}gb"

    def revert(self, size_gb: int, result: Any, **kwargs: Any) -> None:
        if isinstance(result, Failure):
            return  # creating it failed: nothing to delete
        log.info("deleting volume %s", result)


class BootServer(Task):
    """Boots a server from ``image``."""

    provides = "server_id"

    def execute(self, image: str) -> str:
        self.update_progress(1.0)
        return f"srv-{image}"

    def revert(self, image: str, result: Any, **kwargs: Any) -> None:
        if not isinstance(result, Failure):
            log.info("deleting server %s", result)


@task(provides="attachment")
def attach(volume_id: str, server_id: str) -> dict[str, str]:
    """Attaches the volume to the server."""
    return {"volume": volume_id, "server": server_id}


class ConfigureNetwork(Task):
    """Gives the server an address; fails when ``network`` is 'broken'."""

    provides = "address"

    def execute(self, server_id: str, network: str) -> str:
        if network == "broken":
            raise ConnectionError(f"network {network!r} refused server {server_id}")
        return "10.0.0.7"
