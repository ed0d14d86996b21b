"""The transform loop: this shard's input objects, block by block, through the serving Batcher.

Per object: skip it when its output exists (resume), else stream its blocks, submit each parsed
block to the Batcher (ONNX Runtime on the Batcher's worker thread), read and parse the next block
while up to `max_concurrent_transforms` blocks are in flight (with 2: one runs and one waits, so
ONNX Runtime need not wait for the parser), and append the answers in input order to an atomic
writer that is committed only when the whole object is done.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from berth_serving.batcher import Batcher, Job
from berth_serving.signature import Signature
from berth_serving.transform import storage
from berth_serving.transform.assemble import Assembler, merge_outputs
from berth_serving.transform.options import ERRORS_SUFFIX, OUTPUT_SUFFIX, TransformOptions
from berth_serving.transform.records import BadRecord, InputError, Parsed, Parser, open_records, read_blocks

log = logging.getLogger("berth.transform")
SWITCH_INTERVAL_SECONDS = 0.0005


class TransformError(Exception):
    """The transform cannot go on; the message names the object (and line) and says why."""


class StorageFailure(TransformError):
    """Object storage failed (listing, reading, writing): unlike bad data, a retry may succeed."""


class BadOptions(TransformError):
    """The options cannot work (where the output would go): a retry cannot help."""


def check_locations(options: TransformOptions) -> None:
    """Refuse an output that cannot work, before any model is loaded: outputs among the inputs
    (the output prefix is the input or holds it: the listing would skip every input), or an
    output that is an existing file (INPUT.out objects go under it)."""
    try:
        source, output = storage.parse_uri(options.input_uri), storage.parse_uri(options.output_uri)
    except storage.StorageError as error:
        raise BadOptions(str(error)) from None
    if storage.holds(output, source):
        raise BadOptions(
            f"the output prefix {options.output_uri} holds the input {options.input_uri}: the outputs "
            "would land among the inputs; give an output prefix outside the input"
        )
    if output.scheme == "file" and os.path.exists(output.path) and not os.path.isdir(output.path):
        raise BadOptions(
            f"the output {options.output_uri} is an existing file; give a directory (the prefix of the "
            "INPUT.out objects)"
        )


@dataclass
class Summary:
    objects: int = 0  # input objects of this shard
    done: int = 0  # objects transformed by this run
    skipped: int = 0  # objects whose output existed already (resumed run)
    records: int = 0  # records transformed by this run
    failed: int = 0  # malformed records skipped under the error budget

    def as_message(self) -> str:
        """The pod's termination message: the operator sums these over the Job's pods."""
        return orjson.dumps(
            {
                "objects": self.objects,
                "done": self.done,
                "skipped": self.skipped,
                "records": self.records,
                "failed": self.failed,
            }
        ).decode()


@dataclass(frozen=True)
class LoadedModel:
    session: Any
    signature: Signature
    output_names: list[str]

    @classmethod
    def from_session(cls, session: Any, model_path: Path) -> LoadedModel:
        # The path lets the signature read the graph: batches merge only where rows provably align.
        signature = Signature.from_session(session, model_path)
        return cls(session, signature, [spec.name for spec in signature.outputs])

    def run(self, feed: dict[str, Any]) -> list[Any]:
        return self.session.run(self.output_names, feed)


def load_model(
    uri: str,
    scratch: Path,
    *,
    sha256: str | None = None,
    threads: int = 0,
    optimization: str = "all",
    providers: tuple[str, ...] = (),
) -> LoadedModel:
    from berth_serving.fetch import resolve_model
    from berth_serving.session import load_session

    path = resolve_model(uri, scratch, sha256)
    return LoadedModel.from_session(
        load_session(path, threads=threads, optimization=optimization, providers=providers), path
    )


class Listener:
    """Progress callbacks (the terminal progress line); the default does nothing."""

    def started(self, total_objects: int) -> None: ...
    def object_started(self, name: str) -> None: ...
    def records_done(self, count: int) -> None: ...
    def object_finished(self, name: str, skipped: bool) -> None: ...
    def finished(self, summary: Summary) -> None: ...


@dataclass
class _Budget:
    allowed: int
    spent: int = 0
    listed: list[BadRecord] = field(default_factory=list)

    def spend(self, uri: str, bad: list[BadRecord]) -> None:
        for record in bad:
            self.spent += 1
            where = f"{uri}:{record.line}: {record.message}"
            if self.allowed == 0:
                raise TransformError(f"malformed record at {where}")
            if self.spent > self.allowed:
                raise TransformError(f"more than {self.allowed} malformed records; the last at {where}")
            log.warning("skipped malformed record at %s", where)


def shard(items: list[Any], index: int, count: int) -> list[Any]:
    """This pod's share: every count-th object from index, so shares differ by at most one."""
    return items[index::count]


def run_transform(options: TransformOptions, model: LoadedModel, listener: Listener | None = None) -> Summary:
    options.check()
    check_locations(options)
    # The event loop thread parses while ONNX Runtime runs on the Batcher's worker, which needs
    # the GIL for a moment between batches: a short switch interval keeps it from waiting 5 ms.
    interval = sys.getswitchinterval()
    sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
    try:
        return asyncio.run(_Run(options, model, listener or Listener()).run())
    finally:
        sys.setswitchinterval(interval)


class _Run:
    def __init__(self, options: TransformOptions, model: LoadedModel, listener: Listener) -> None:
        self.options = options
        self.model = model
        self.listener = listener
        self.summary = Summary()
        self.budget = _Budget(options.max_errors)
        try:
            self.parser = Parser(model.signature, options.content_type)
        except InputError as error:
            raise TransformError(str(error)) from None
        self.assembler = Assembler(
            model.output_names,
            accept=options.accept,
            assemble_with=options.assemble_with,
            join_source=options.join_source,
            input_type=options.content_type,
        )
        # SingleRecord, or a model with a fixed batch dimension: one record per ONNX Runtime call.
        self.single = options.batch_strategy == "SingleRecord" or not model.signature.batchable

    async def run(self) -> Summary:
        options = self.options
        try:
            objects = storage.list_inputs(options.input_uri, exclude_uri=options.output_uri)
        except storage.StorageError as error:
            raise StorageFailure(str(error)) from None
        mine = shard(objects, options.shard_index, options.shard_count)
        self.summary.objects = len(mine)
        self.listener.started(len(mine))
        output_root = storage.parse_uri(options.output_uri)
        batcher = Batcher(
            self.model.run,
            asyncio.get_running_loop(),
            batchable=not self.single,
            max_batch_size=1 if self.single else options.max_batch_size,
            max_delay_seconds=0.0,  # blocks are already batches: never wait for more
        )
        batcher.start()
        try:
            for location, relative in mine:
                target = output_root.child(relative + OUTPUT_SUFFIX)
                if storage.exists(target):
                    self.summary.skipped += 1
                    self.listener.object_finished(relative, skipped=True)
                    continue
                self.listener.object_started(relative)
                errors = output_root.child(relative + ERRORS_SUFFIX)
                await self._transform_object(batcher, location, target, errors)
                self.summary.done += 1
                self.listener.object_finished(relative, skipped=False)
        except storage.StorageError as error:
            raise StorageFailure(str(error)) from None
        finally:
            batcher.stop()
        self.summary.failed = self.budget.spent
        self.listener.finished(self.summary)
        return self.summary

    async def _transform_object(
        self,
        batcher: Batcher,
        source: storage.Location,
        target: storage.Location,
        errors_at: storage.Location,
    ) -> None:
        options = self.options
        uri = source.uri
        writer = storage.open_output(target)
        window: deque[tuple[list[Job], Parsed, int]] = deque()
        bad_here: list[BadRecord] = []
        stream = storage.open_input(source)
        try:
            blocks = read_blocks(
                open_records(stream, options.compression),
                content_type=options.content_type,
                split_type=options.split_type,
                max_bytes=options.max_payload_bytes,
                max_rows=1 if self.single else options.max_batch_size,
            )
            try:
                for block in blocks:  # read and parsed while up to max_concurrent_transforms run
                    parsed = self.parser.parse(block)
                    if parsed.bad:
                        self.budget.spend(uri, parsed.bad)
                        bad_here.extend(parsed.bad)
                    if parsed.rows:
                        while len(window) >= options.max_concurrent_transforms:
                            await self._write_oldest(window, writer, uri)
                        window.append((self._submit(batcher, parsed), parsed, block.first_line))
                while window:
                    await self._write_oldest(window, writer, uri)
            except InputError as error:
                raise TransformError(f"{uri}: {error}") from None
            except (OSError, EOFError) as error:  # a truncated gzip stream, a broken connection
                raise TransformError(f"{uri}: cannot read: {error}") from None
            if bad_here:
                listing = (orjson.dumps({"line": b.line, "error": b.message}) + b"\n" for b in bad_here)
                storage.write_object(errors_at, listing)
        except BaseException:
            for jobs, _, _ in window:
                for job in jobs:
                    job.cancelled = True
            writer.abort()
            raise
        finally:
            stream.close()
        writer.commit()

    def _submit(self, batcher: Batcher, parsed: Parsed) -> list[Job]:
        if not self.single or parsed.rows == 1:
            return [batcher.submit(parsed.feed, parsed.rows)]
        return [
            batcher.submit({name: array[row : row + 1] for name, array in parsed.feed.items()}, 1)
            for row in range(parsed.rows)
        ]

    async def _write_oldest(
        self, window: deque[tuple[list[Job], Parsed, int]], writer: storage.AtomicWriter, uri: str
    ) -> None:
        jobs, parsed, first_line = window.popleft()
        try:
            results = [await job.future for job in jobs]
        except Exception as error:
            raise TransformError(
                f"{uri}: records from line {first_line}: the model failed: {error}"
            ) from None
        outputs = merge_outputs([outputs for outputs, _ in results])
        writer.write(self.assembler.encode(outputs, parsed.lines))
        self.summary.records += parsed.rows
        self.listener.records_done(parsed.rows)
