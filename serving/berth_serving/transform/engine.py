"""The transform loop: this shard's input objects, block by block, through the serving Batcher.

Per object: skip it when its output exists (resume), else run three stages at once, each on its
own thread, so that the 2 cores are kept busy by the model rather than by Python:

- parse (thread berth-parse): read the next block of about 1 MiB of whole lines (gzip
  inflated by ISA-L) and parse it with Berth's C parser, or Apache Arrow where that refuses
  (records.py, arrow.py, numbers.py), outside the GIL, while the batches of the block before
  it run; one block ahead at most;
- infer (the Batchers' workers, berth-ort-worker): ONNX Runtime on batches of at most
  `max_batch_size` rows, one call per worker side by side (`max_concurrent_transforms` of
  them, at most one per CPU: cli.thread_split), each worker with its next batch queued behind
  the one it runs, so that it never waits for the event loop to hand it one (at 2 calls on
  2 CPUs, queueing one each took 1,000,000 CSV rows from 13.9 s to 13.2 s);
- write (thread berth-write): the answers encoded a batch at a time (orjson, Arrow) and
  appended in input order to an atomic writer that is committed only when the object is done;
  at most WRITES_AHEAD batches wait for it.

The event loop only hands work between the stages. Memory holds one block being parsed, one
parsed, the batches in flight and the writes waiting: flat whatever the object's size.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import sys
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from berth_serving import storage
from berth_serving.batcher import Batcher, Job
from berth_serving.signature import Signature
from berth_serving.transform import arrow
from berth_serving.transform.assemble import Assembler, merge_outputs
from berth_serving.transform.filters import FilteredParser
from berth_serving.transform.options import ERRORS_SUFFIX, OUTPUT_SUFFIX, TransformOptions
from berth_serving.transform.records import (
    BadRecord,
    Block,
    InputError,
    Parsed,
    Parser,
    open_records,
    read_blocks,
)

if TYPE_CHECKING:
    from berth_serving.capture import CaptureConfig, Capturer
    from berth_serving.config import PipelineStage

log = logging.getLogger("berth.transform")
# What the parse stage hands on per block: its full batches, each with the line it starts
# from, and the block's malformed records.
_Parsed = tuple[list[tuple[int, Parsed]], list[BadRecord]]
SWITCH_INTERVAL_SECONDS = 0.0005
BLOCK_ROWS = 1 << 16  # lines per block at most; a block is about records.READ_BYTES of text
WRITES_AHEAD = 2  # encoded batches waiting for the writer thread, at most
# How long the end of a transform waits for the captured events to be written and uploaded;
# what is left then is counted as dropped (reason shutdown).
CAPTURE_CLOSE_SECONDS = 60.0
TRANSFORM_SOURCE = "transform"  # eventMetadata.source of a transform's events


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
    captured: int | None = None  # with --capture: events written to the destination
    capture_dropped: int | None = None  # ... and events dropped (buffer full, upload failed, shutdown)

    def as_message(self) -> str:
        """The pod's termination message: the operator sums these over the Job's pods."""
        counts: dict[str, int] = {
            "objects": self.objects,
            "done": self.done,
            "skipped": self.skipped,
            "records": self.records,
            "failed": self.failed,
        }
        if self.captured is not None:
            counts["captured"] = self.captured
            counts["captureDropped"] = self.capture_dropped or 0
        return orjson.dumps(counts).decode()


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
    pipeline: tuple[PipelineStage, ...] = (),
) -> LoadedModel:
    """The model at `uri`, or with `pipeline` its stages run serially as one model (the
    serving runtime's PipelineSession: the first stage's inputs, the last one's outputs; a
    wiring that cannot work raises WiringError, naming both signatures)."""
    from berth_serving.fetch import resolve_model
    from berth_serving.session import load_session

    if pipeline:
        from berth_serving.config import ServeConfig
        from berth_serving.pipeline import load_pipeline

        config = ServeConfig(
            model_uri="",
            pipeline=pipeline,
            intra_op_threads=threads,
            graph_optimization_level=optimization,
            providers=providers,
        )
        session = load_pipeline(config, scratch)
        signature = session.signature
        return LoadedModel(session, signature, [spec.name for spec in signature.outputs])
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


def run_transform(
    options: TransformOptions,
    model: LoadedModel,
    listener: Listener | None = None,
    *,
    parse_threads: int = 1,
    inference_workers: int = 1,
    capture: CaptureConfig | None = None,
) -> Summary:
    """`parse_threads`: Arrow threads for one block's parse (1: the parse thread alone);
    `inference_workers`: ONNX Runtime calls run side by side (each on a thread of its own);
    `capture`: each sampled record's input and answer line offered to a Capturer (never
    waited for: a full buffer drops and counts), flushed when the transform ends."""
    options.check()
    check_locations(options)
    arrow.set_parse_threads(parse_threads)
    # Three threads take the GIL for moments between their C++ calls (ORT, Arrow, orjson): a
    # short switch interval keeps the ORT worker from waiting 5 ms for it between batches.
    interval = sys.getswitchinterval()
    sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
    try:
        run = _Run(options, model, listener or Listener(), capture)
        run.workers = max(1, inference_workers)
        return asyncio.run(run.run())
    finally:
        sys.setswitchinterval(interval)


class _Run:
    def __init__(
        self,
        options: TransformOptions,
        model: LoadedModel,
        listener: Listener,
        capture: CaptureConfig | None = None,
    ) -> None:
        self.options = options
        self.model = model
        self.listener = listener
        self.summary = Summary()
        self.budget = _Budget(options.max_errors)
        try:
            selection, self.output_filter = options.filters()
        except ValueError as error:
            raise BadOptions(str(error)) from None
        join = options.join_source == "Input"
        self.capture = _RecordCapture(capture, model.output_names, options) if capture is not None else None
        keep = join or (self.capture is not None and self.capture.inputs)
        self.parser: Parser | FilteredParser
        try:
            if selection is None and self.output_filter is None:  # the Parser alone, as fast as it is
                self.parser = Parser(model.signature, options.content_type, keep_lines=keep)
            else:
                self.parser = FilteredParser(
                    model.signature,
                    options.content_type,
                    selection,
                    keep_lines=keep,
                    keep_numbers=self.output_filter is not None,
                )
        except InputError as error:
            raise TransformError(str(error)) from None
        self.assembler = Assembler(
            model.output_names,
            accept=options.accept,
            assemble_with=options.assemble_with,
            join_source=options.join_source,
            input_type=options.content_type,
            output_filter=self.output_filter,
        )
        # SingleRecord, or a model with a fixed batch dimension: one record per ONNX Runtime call.
        self.single = options.batch_strategy == "SingleRecord" or not model.signature.batchable
        self.workers = 1  # ONNX Runtime calls side by side
        self.parse_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="berth-parse")
        self.write_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="berth-write")

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
        batcher = _Workers(
            [
                Batcher(
                    self.model.run,
                    asyncio.get_running_loop(),
                    batchable=not self.single,
                    max_batch_size=1 if self.single else options.max_batch_size,
                    max_delay_seconds=0.0,  # blocks are already batches: never wait for more
                )
                for _ in range(self.workers)
            ]
        )
        batcher.start()
        if self.capture is not None:
            self.capture.capturer.start()
        try:
            for location, relative in mine:
                target = output_root.child(relative + OUTPUT_SUFFIX)
                if storage.exists(target):
                    self.summary.skipped += 1
                    self.listener.object_finished(relative, skipped=True)
                    continue
                self.listener.object_started(relative)
                errors = output_root.child(relative + ERRORS_SUFFIX)
                if self.capture is not None:
                    self.capture.begin(relative)
                await self._transform_object(batcher, location, target, errors)
                self.summary.done += 1
                self.listener.object_finished(relative, skipped=False)
        except storage.StorageError as error:
            raise StorageFailure(str(error)) from None
        finally:
            batcher.stop()
            self.parse_pool.shutdown(wait=True)
            self.write_pool.shutdown(wait=True)
            if self.capture is not None:
                self.capture.finish(self.summary)
        self.summary.failed = self.budget.spent
        self.listener.finished(self.summary)
        return self.summary

    async def _transform_object(
        self,
        batcher: _Workers,
        source: storage.Location,
        target: storage.Location,
        errors_at: storage.Location,
    ) -> None:
        options = self.options
        uri = source.uri
        writer = storage.open_output(target)
        window: deque[tuple[list[Job], Parsed, int]] = deque()
        writes: deque[concurrent.futures.Future[list[BadRecord]]] = deque()
        bad_here: list[BadRecord] = []
        parsing: concurrent.futures.Future[_Parsed | None] | None = None
        stream = storage.open_input(source)
        try:
            try:
                blocks = read_blocks(
                    open_records(stream, options.compression),
                    content_type=options.content_type,
                    split_type=options.split_type,
                    max_bytes=options.max_payload_bytes,
                    max_rows=BLOCK_ROWS if options.split_type == "Line" else options.max_batch_size,
                )
                stage = self._parse_stage(blocks)
                parsing = self.parse_pool.submit(next, stage, None)
                while True:
                    item = await asyncio.wrap_future(parsing)
                    if item is None:
                        parsing = None
                        break
                    batches, bad = item
                    parsing = self.parse_pool.submit(next, stage, None)  # parsed while these run
                    if bad:
                        self.budget.spend(uri, bad)
                        bad_here.extend(bad)
                    for first_line, batch in batches:
                        while len(window) >= options.max_concurrent_transforms + batcher.workers:
                            await self._write_oldest(window, writes, writer, uri, bad_here)
                        window.append((self._submit(batcher, batch), batch, first_line))
                while window:
                    await self._write_oldest(window, writes, writer, uri, bad_here)
                while writes:
                    await self._written(writes.popleft(), uri, bad_here)
            except InputError as error:
                raise TransformError(f"{uri}: {error}") from None
            except (OSError, EOFError) as error:  # a bad or truncated gzip stream, a broken connection
                raise TransformError(f"{uri}: cannot read: {error}") from None
            if bad_here:
                bad_here.sort(key=lambda record: record.line)  # the outputFilter's come late
                listing = (orjson.dumps({"line": b.line, "error": b.message}) + b"\n" for b in bad_here)
                storage.write_object(errors_at, listing)
        except BaseException:
            for jobs, _, _ in window:
                for job in jobs:
                    job.cancelled = True
            _settle(writes)  # the writer thread lets go of the writer before it is aborted
            writer.abort()
            raise
        finally:
            _settle([parsing] if parsing is not None else [])  # the parse thread lets go of the stream
            stream.close()
        writer.commit()

    def _parse_stage(self, blocks: Iterator[Block]) -> Iterator[_Parsed]:
        """On the parse thread: per block read and parsed, its full batches (each with the line
        it starts from) and its bad records. Blocks are cut by bytes, not rows: the records
        after the block's last full batch wait to fill one with the next block's (a copy of
        at most a batch), so ONNX Runtime gets batches of max_batch_size, not a small one at
        the end of every block; the object's last batch may be smaller."""
        size = self.options.max_batch_size
        carry: tuple[int, Parsed] | None = None
        for block in blocks:
            parsed = self.parser.parse(block)
            if self.options.split_type == "None":  # the object is one payload: one call, one answer
                yield ([(block.first_line, parsed)] if parsed.rows else []), parsed.bad
                continue
            batches: list[tuple[int, Parsed]] = []
            rest = parsed
            if carry is not None and rest.rows:
                taken, rest = rest.head(size - carry[1].rows)
                carry = (carry[0], carry[1].join(taken))
                if carry[1].rows == size:
                    batches.append(carry)
                    carry = None
            for part in rest.slices(size) if rest.rows else ():
                if part.rows == size:
                    batches.append((block.first_line, part))
                else:
                    carry = (block.first_line, part)
            yield batches, parsed.bad
        if carry is not None:
            yield [carry], []

    def _submit(self, batcher: _Workers, parsed: Parsed) -> list[Job]:
        if not self.single or parsed.rows == 1:
            return [batcher.submit(parsed.feed, parsed.rows)]
        return [
            batcher.submit({name: array[row : row + 1] for name, array in parsed.feed.items()}, 1)
            for row in range(parsed.rows)
        ]

    async def _write_oldest(
        self,
        window: deque[tuple[list[Job], Parsed, int]],
        writes: deque[concurrent.futures.Future[list[BadRecord]]],
        writer: storage.AtomicWriter,
        uri: str,
        bad_here: list[BadRecord],
    ) -> None:
        jobs, parsed, first_line = window.popleft()
        try:
            results = [await job.future for job in jobs]
        except Exception as error:
            raise TransformError(
                f"{uri}: records from line {first_line}: the model failed: {error}"
            ) from None
        outputs = merge_outputs([outputs for outputs, _ in results])
        while len(writes) >= WRITES_AHEAD:
            await self._written(writes.popleft(), uri, bad_here)
        writes.append(self.write_pool.submit(self._write, writer, outputs, parsed.lines, parsed.numbers))
        self.summary.records += parsed.rows
        self.listener.records_done(parsed.rows)

    async def _written(
        self, write: concurrent.futures.Future[list[BadRecord]], uri: str, bad_here: list[BadRecord]
    ) -> None:
        """A batch written; the records the outputFilter could not select from go to the budget."""
        bad = await asyncio.wrap_future(write)
        if bad:
            self.summary.records -= len(bad)
            self.budget.spend(uri, bad)
            bad_here.extend(bad)

    def _write(
        self, writer: storage.AtomicWriter, outputs: list[Any], lines: list[bytes], numbers: list[int]
    ) -> list[BadRecord]:
        """On the writer thread: one batch's answers, encoded and appended; the records the
        outputFilter skipped, by line."""
        if self.output_filter is None:
            data = self.assembler.encode(outputs, lines)
            writer.write(data)
            if self.capture is not None:
                self.capture.offer(outputs, lines, data)
            return []
        data, failed = self.assembler.encode_filtered(outputs, lines)
        writer.write(data)
        if self.capture is not None:
            self.capture.offer(outputs, lines, None)
        return [BadRecord(numbers[index], message) for index, message in failed]


class _RecordCapture:
    """Batch transform capture: an event per record, inferenceId OBJECT:INDEX (the object's
    path under the input prefix, the record's index in it from 0), so a retried transform
    samples the same records. Input: the record's text in the input content type; output: its
    answer line in the accept type (without the joined input or the outputFilter). Runs on the
    writer thread, which sees an object's batches in order; `offer` never waits."""

    def __init__(self, config: CaptureConfig, output_names: list[str], options: TransformOptions) -> None:
        from berth_serving.capture import Capturer

        self.capturer: Capturer = Capturer(config)
        self.inputs = config.captures_input
        self.outputs = config.captures_output
        self.input_type = options.content_type.encode()
        self.output_type = options.accept.encode()
        self.lined = options.split_type == "Line"
        # What is written is the answer lines themselves unless joined, filtered or unsplit: then
        # the answers are encoded once more for the capture, a line per record.
        self.reuse = options.assemble_with == "Line" and options.join_source == "None"
        self.answers = Assembler(
            output_names,
            accept=options.accept,
            assemble_with="Line",
            join_source="None",
            input_type=options.content_type,
        )
        self.prefix = b""
        self.next = 0

    def begin(self, relative: str) -> None:
        self.prefix = relative.encode() + b":"
        self.next = 0

    def offer(self, outputs: list[Any], lines: list[bytes], written: bytes | None) -> None:
        rows = len(outputs[0]) if outputs and hasattr(outputs[0], "__len__") else 1
        if not self.lined:
            rows = 1
        first = self.next
        self.next += rows
        capturer = self.capturer
        ids = [self.prefix + str(first + i).encode() for i in range(rows)]
        chosen = [i for i, inference_id in enumerate(ids) if capturer.sampled(inference_id)]
        if not chosen:
            return
        answers: list[bytes] | None = None
        if self.outputs:
            data = written if written is not None and self.reuse else self.answers.encode(outputs, [])
            if not self.lined:
                answers = [data.rstrip(b"\n")]
            else:
                answers = data.split(b"\n")
                if answers and not answers[-1]:
                    answers.pop()
                if len(answers) != rows:  # not a line per record: no answer to pair with a record
                    answers = None
        records = lines if self.inputs and len(lines) == rows else None
        if not self.lined and self.inputs and lines:
            records = [b"".join(lines)]
        for i in chosen:
            record = records[i].rstrip(b"\r\n") if records is not None else None
            answer = answers[i] if answers is not None else None
            capturer.offer(ids[i], self.input_type, record, self.output_type, answer, TRANSFORM_SOURCE)

    def finish(self, summary: Summary) -> None:
        self.capturer.close(CAPTURE_CLOSE_SECONDS)
        stats = self.capturer.stats
        summary.captured = stats.written
        summary.capture_dropped = sum(stats.dropped.values())


class _Workers:
    """Batchers whose worker threads run ONNX Runtime calls side by side, taking batches in turn."""

    def __init__(self, batchers: list[Batcher]) -> None:
        self.batchers = batchers
        self.turn = 0

    @property
    def workers(self) -> int:
        return len(self.batchers)

    def start(self) -> None:
        for batcher in self.batchers:
            batcher.start()

    def stop(self) -> None:
        for batcher in self.batchers:
            batcher.stop()

    def submit(self, inputs: dict[str, Any], rows: int) -> Job:
        self.turn = (self.turn + 1) % len(self.batchers)
        return self.batchers[self.turn].submit(inputs, rows)


def _settle(futures: Any) -> None:
    """Wait for work handed to a stage's thread to end, whatever its outcome (a failure is
    already being reported)."""
    for future in list(futures):
        with contextlib.suppress(BaseException):
            future.result()
