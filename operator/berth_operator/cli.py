"""The `berth` command. Each subcommand lives with the code it drives and is imported
only when used, so `berth serve` in the slim serving image never imports kopf."""

from __future__ import annotations

import importlib
from typing import Any

import click

# command name -> "module:attribute" of a click.Command
COMMANDS = {
    "serve": "berth_serving.cli:serve",
    "fetch-model": "berth_serving.cli:fetch_model",
    "crds": "berth_operator.crdgen:crds_command",
    "render": "berth_operator.render:render_command",
    "operator": "berth_operator.runner:operator_command",
    "up": "berth_operator.local.cli:up_command",
    "invoke": "berth_operator.invoke:invoke_command",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attribute = target.split(":")
        command: Any = getattr(importlib.import_module(module_name), attribute)
        return command  # type: ignore[no-any-return]


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="berth")
def main() -> None:
    """Berth: SageMaker-style model hosting on Kubernetes, and on this machine."""
