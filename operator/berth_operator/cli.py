"""The `berth` command. Each subcommand lives with the code it drives and is imported
only when used, so `berth serve` in the slim serving image never imports kopf."""

from __future__ import annotations

import importlib
from typing import Any

import click

# command name -> ("module:attribute" of a click.Command, one-line help for `berth --help`)
COMMANDS = {
    "serve": ("berth_serving.cli:serve", "Serve an ONNX model over HTTP (the runtime of every pod)."),
    "fetch-model": (
        "berth_serving.cli:fetch_model",
        "Download a model into a directory (the init container).",
    ),
    "async-frontdoor": (
        "berth_serving.asyncinf.cli:frontdoor_command",
        "Queue async invocations of an endpoint (its front door).",
    ),
    "async-worker": (
        "berth_serving.asyncinf.cli:worker_command",
        "Answer queued async invocations beside one replica.",
    ),
    "crds": ("berth_operator.crdgen:crds_command", "Print the CustomResourceDefinitions."),
    "render": ("berth_operator.render:render_command", "Print the objects the operator would create."),
    "operator": ("berth_operator.runner:operator_command", "Run the Kubernetes operator."),
    "up": ("berth_operator.local.cli:up_command", "Serve manifests on this machine (local mode)."),
    "invoke": ("berth_operator.invoke:invoke_command", "Send a request to an endpoint."),
    "transform": ("berth_serving.transform.cli:transform", "Run a model over a dataset (batch transform)."),
    "monitor": (
        "berth_serving.monitor.cli:monitor",
        "Baseline statistics and drift checks over captured data.",
    ),
    "recommend": (
        "berth_operator.recommend.cli:recommend_command",
        "Load-test a model on instance types and write the EndpointConfig to use.",
    ),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        module_name, attribute = COMMANDS[cmd_name][0].split(":")
        command: Any = getattr(importlib.import_module(module_name), attribute)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Static help text: listing the commands must not import kopf, ONNX Runtime or FastAPI.
        with formatter.section("Commands"):
            formatter.write_dl([(name, text) for name, (_, text) in sorted(COMMANDS.items())])


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="berth")
def main() -> None:
    """Berth: SageMaker-style model hosting on Kubernetes, and on this machine."""
