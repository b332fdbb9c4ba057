"""The ``workerflow`` command line.

Subcommands come from the ``workerflow.commands`` entry-point group, so packages layered above
``workerflow`` (the ``worker`` daemon first of all) plug their commands in without ``workerflow``
importing them: ``workerflow worker ...`` is ``worker.cli:worker_command``.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any

import click

ENTRY_POINT_GROUP = "workerflow.commands"


class PluginGroup(click.Group):
    """A click group whose commands are loaded from entry points on first use."""

    def _plugins(self) -> dict[str, Any]:
        return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self._plugins()))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            return command
        plugin = self._plugins().get(cmd_name)
        if plugin is None:
            return None
        loaded = plugin.load()
        if not isinstance(loaded, click.Command):
            raise click.ClickException(
                f"entry point {plugin.value!r} for 'workerflow {cmd_name}' is not a click command"
            )
        return loaded


@click.group(cls=PluginGroup)
@click.version_option(package_name="workerflow")
def main() -> None:
    """workerflow: flows of tasks with revert, run on a fleet of workers over a message bus."""
