"""`berth transform`: run a model over a dataset, on this machine or as a TransformJob's pod.

In a pod the operator passes every option as a flag; the shard index comes from the Indexed
Job's JOB_COMPLETION_INDEX. The exit status is 0 when every object of the shard is done, 1 when
the data or the model is at fault (a retry cannot help), 2 for options that cannot work (the
Job's podFailurePolicy fails the Job on 1 and 2), 3 when object storage failed (a retry may
help) and 143 on SIGTERM, after the scratch directory and partial outputs are removed. The
Kubernetes termination message carries the counts (or the reason, the line printed on stderr).
"""

from __future__ import annotations

import contextlib
import signal
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import click

from berth_serving.config import ENV, pipeline_from_json
from berth_serving.transform.options import (
    ACCEPT_TYPES,
    CONTENT_TYPES,
    DEFAULT_MAX_BATCH_SIZE,
    DEFAULT_MAX_PAYLOAD_BYTES,
    NPY,
    TransformOptions,
)

EXIT_DATA = 1  # malformed input, a model that does not fit the data: retrying cannot help
EXIT_USAGE = 2  # options that cannot work (click's own usage errors exit 2 as well)
EXIT_STORAGE = 3  # listing, reading or writing objects failed: a retry may help
_LEVELS = click.Choice(["disable", "basic", "extended", "all"], case_sensitive=False)


@click.command("transform", context_settings={"show_default": True})
@click.option(
    "--model",
    "model_uri",
    default="",
    help="The ONNX model (path, file://, http(s)://, s3://); or give --pipeline.",
)
@click.option(
    "--pipeline",
    default="",
    envvar=ENV["pipeline"],
    metavar="JSON",
    help='An inference pipeline instead of --model, as `berth serve --pipeline`: [{"name", "modelUri" | "url", '
    '"sha256", "outputs"}, ...].',
)
@click.option("--input", "input_uri", required=True, help="An input object, or a prefix/directory of them.")
@click.option("--output", "output_uri", required=True, help="Output prefix: INPUT.out per input object.")
@click.option("--content-type", type=click.Choice(CONTENT_TYPES), default="text/csv")
@click.option(
    "--split-type",
    type=click.Choice(["Line", "None"]),
    default="Line",
    help="None: an object is one payload.",
)
@click.option("--compression", type=click.Choice(["None", "Gzip"]), default="None")
@click.option("--accept", type=click.Choice(ACCEPT_TYPES), default="text/csv", help="Output format.")
@click.option("--assemble-with", type=click.Choice(["Line", "None"]), default="Line")
@click.option("--batch-strategy", type=click.Choice(["MultiRecord", "SingleRecord"]), default="MultiRecord")
@click.option("--max-payload-bytes", type=click.IntRange(min=1), default=DEFAULT_MAX_PAYLOAD_BYTES)
@click.option(
    "--max-batch-size",
    type=click.IntRange(min=1),
    default=DEFAULT_MAX_BATCH_SIZE,
    help="Rows per ONNX Runtime call.",
)
@click.option(
    "--max-concurrent-transforms",
    type=click.IntRange(min=1),
    default=2,
    help="ONNX Runtime calls side by side (at most one per CPU), each with its next batch queued.",
)
@click.option("--join-source", type=click.Choice(["None", "Input"]), default="None")
@click.option(
    "--input-filter",
    default="",
    metavar="JSONPATH",
    help="What the model sees of each record (SageMaker's InputFilter): $[1:], $[0,2,5] for CSV; $.features, "
    "$['a','b'] for JSON Lines.",
)
@click.option(
    "--output-filter",
    default="",
    metavar="JSONPATH",
    help="What is written of each record, joined with --join-source Input (SageMaker's OutputFilter): $[0,-1], "
    "$['id','SageMakerOutput'].",
)
@click.option(
    "--max-errors",
    type=click.IntRange(min=0),
    default=0,
    help="Malformed records tolerated (listed in INPUT.errors).",
)
@click.option("--shard-index", type=click.IntRange(min=0), default=0, envvar="JOB_COMPLETION_INDEX")
@click.option("--shard-count", type=click.IntRange(min=1), default=1)
@click.option("--sha256", default=None, help="Expected sha256 of the model file.")
@click.option(
    "--intra-op-threads",
    type=click.IntRange(min=0),
    default=0,
    help="Per ONNX Runtime call; 0 = the container's CPUs, shared by the calls in flight.",
)
@click.option(
    "--parse-workers",
    type=click.IntRange(min=0),
    default=None,
    help="Workers that read and parse the next blocks while the calls run; default: the CPUs the calls leave.",
)
@click.option("--graph-optimization-level", type=_LEVELS, default="all")
@click.option("--providers", default="", help="Execution providers, comma separated (cuda, cpu).")
@click.option(
    "--capture",
    default="",
    envvar=ENV["capture"],
    metavar="JSON",
    help='Capture each record\'s input and answer (as `berth serve --capture`): {"destinationUri", "endpoint", '
    '"variant", "samplingPercentage", ...}; events go to DEST/ENDPOINT/VARIANT/yyyy/mm/dd/hh/UUID.jsonl with '
    "source transform, inferenceId OBJECT:INDEX.",
)
@click.option(
    "--progress/--no-progress", default=None, help="Progress line on stderr [default: when a terminal]."
)
def transform(
    model_uri: str,
    pipeline: str,
    sha256: str | None,
    intra_op_threads: int,
    parse_workers: int | None,
    graph_optimization_level: str,
    providers: str,
    capture: str,
    progress: bool | None,
    **fields: Any,
) -> None:
    """Run the model over every record of the input and write the predictions to the output."""
    from berth_serving.fetch import FetchError
    from berth_serving.logs import setup_logging
    from berth_serving.pipeline.wiring import WiringError
    from berth_serving.termination import write_termination_message
    from berth_serving.transform.engine import (
        BadOptions,
        Listener,
        StorageFailure,
        TransformError,
        check_locations,
        load_model,
        run_transform,
    )
    from berth_serving.transform.progress import ProgressLine

    try:
        stages = pipeline_from_json(pipeline)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--pipeline") from None
    from berth_serving.capture import capture_from_json

    try:
        capture_config = capture_from_json(capture)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--capture") from None
    if bool(model_uri) == bool(stages):
        raise click.UsageError("give --model or --pipeline (one of them)")
    if stages and sha256:
        raise click.UsageError("--sha256 checks --model; a pipeline stage's sha256 is in its JSON")
    options = TransformOptions(**fields)
    try:
        options.check()
    except ValueError as error:
        raise click.UsageError(str(error)) from None
    setup_logging("warning")
    show = sys.stderr.isatty() if progress is None else progress
    from berth_serving.cgroup import available_cpus

    ort_threads, calls, parsers = thread_split(intra_op_threads, parse_workers, options, available_cpus())
    try:
        with _sigterm_unwinds(), tempfile.TemporaryDirectory(prefix="berth-transform-") as scratch:
            check_locations(options)  # before the model is fetched and loaded
            model = load_model(
                model_uri,
                Path(scratch),
                sha256=sha256 or None,
                threads=ort_threads,
                optimization=graph_optimization_level.lower(),
                providers=tuple(p.strip() for p in providers.split(",") if p.strip()),
                pipeline=stages,
            )
            summary = run_transform(
                options,
                model,
                ProgressLine() if show else Listener(),
                inference_workers=calls,
                parse_workers=parsers,
                capture=capture_config,
            )
    except FetchError as error:
        _fail(f"cannot fetch the model: {error}", EXIT_DATA)
    except WiringError as error:  # stages that cannot feed each other: a retry cannot help
        _fail(f"the pipeline cannot work: {error}", EXIT_DATA)
    except TransformError as error:
        code = EXIT_USAGE if isinstance(error, BadOptions) else EXIT_DATA
        _fail(str(error), EXIT_STORAGE if isinstance(error, StorageFailure) else code)
    write_termination_message(summary.as_message())
    click.echo(
        f"berth transform: {summary.done} objects done, {summary.skipped} already done, "
        f"{summary.records} records, {summary.failed} malformed"
        + (
            f", {summary.captured} captured, {summary.capture_dropped} capture events dropped"
            if summary.captured is not None
            else ""
        ),
        err=True,
    )


def _fail(message: str, code: int) -> NoReturn:
    """One line on stderr, the same in the termination message, and the exit status."""
    from berth_serving.termination import one_line, write_termination_message

    write_termination_message(message)
    click.echo(f"berth transform: {one_line(message)}", err=True)
    sys.exit(code)


@contextlib.contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """SIGTERM (the pod is being stopped) raises SystemExit in the main thread, so every `with`
    and `finally` runs: the scratch directory goes, the partial outputs are aborted; exit 143."""
    from berth_serving.termination import write_termination_message

    def stop(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # unwind once; the kubelet's SIGKILL follows
        write_termination_message("stopped by SIGTERM before the shard was done")
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def thread_split(
    intra_op: int, parse_workers: int | None, options: TransformOptions, cpus: int
) -> tuple[int, int, int]:
    """(ONNX Runtime intra-op threads, calls side by side, workers that parse ahead) for `cpus`
    CPUs; intra_op 0 and parse_workers None mean choose.

    maxConcurrentTransforms calls side by side (at most one per CPU), each by a worker that
    also reads, parses and encodes its own blocks, and each with an equal share of the CPUs (at
    least one thread); a CPU that share leaves over gets a worker that parses ahead. On 2 CPUs:
    2 calls of 1 thread and no more workers. Measured there with the MLP, 300,000 CSV rows,
    against raw ONNX Runtime around each run: 0.76-0.82; with a third worker parsing ahead
    0.59-0.67 (the GIL and three busy threads on two cores). .npy input has no parsing: one
    call with every CPU, as the serving runtime runs."""
    if options.content_type == NPY:
        return intra_op, 1, parse_workers or 0
    calls = max(1, min(options.max_concurrent_transforms, cpus))
    threads = intra_op or max(1, cpus // calls)
    spare = max(0, cpus - calls * threads) if parse_workers is None else parse_workers
    return threads, calls, spare
