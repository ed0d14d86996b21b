"""The transform loop: this shard's input objects, block by block, through ONNX Runtime.

Per object: skip it when its output exists (resume), else cut it into blocks of at most
`max_batch_size` records and `max_payload_bytes` of text (records.py: a block is one ONNX
Runtime call, a mini-batch) and hand the blocks to the workers (_Flow). Each worker reads the
next block (gzip inflated by ISA-L), parses it with Berth's C parser or Apache Arrow where
that refuses (records.py, arrow.py, numbers.py), runs the model on it and encodes the answers
(orjson, Arrow), all outside the GIL but for moments; the block's answers are then appended in
input order to an atomic writer that is committed only when the object is done.

`max_concurrent_transforms` workers run the model at once (at most one per CPU: cli.thread_split)
and one more worker reads and parses meanwhile, so that a model call never waits for a parse.
Memory holds the blocks in the workers' hands and the few waiting for their turn to be
written: flat whatever the object's size.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import os
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from berth_serving import storage, tensors
from berth_serving.signature import Signature
from berth_serving.transform.assemble import Assembler, merge_outputs
from berth_serving.transform.filters import FilteredParser
from berth_serving.transform.options import ERRORS_SUFFIX, OUTPUT_SUFFIX, TransformOptions
from berth_serving.transform.records import (
    BadRecord,
    Block,
    InputError,
    Parser,
    open_records,
    read_blocks,
)

if TYPE_CHECKING:
    from berth_serving.capture import CaptureConfig, Capturer
    from berth_serving.config import PipelineStage

log = logging.getLogger("berth.transform")
SWITCH_INTERVAL_SECONDS = 0.0005
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
    inference_workers: int = 1,
    parse_workers: int = 0,
    capture: CaptureConfig | None = None,
) -> Summary:
    """`inference_workers`: ONNX Runtime calls run side by side, each by a worker that also
    reads, parses and encodes its blocks; `parse_workers`: more workers, which read and parse
    the next blocks while the calls run (for CPUs the calls leave); `capture`: each sampled record's
    input and answer line offered to a Capturer (never waited for: a full buffer drops and
    counts), flushed when the transform ends."""
    options.check()
    check_locations(options)
    # The workers take the GIL for moments between their C calls (parser, ORT, orjson): a
    # short switch interval keeps one from waiting 5 ms for it while another runs Python.
    interval = sys.getswitchinterval()
    sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
    try:
        calls = max(1, inference_workers)
        return _Run(
            options, model, listener or Listener(), capture, calls, calls + max(0, parse_workers)
        ).run()
    finally:
        sys.setswitchinterval(interval)


class _Run:
    def __init__(
        self,
        options: TransformOptions,
        model: LoadedModel,
        listener: Listener,
        capture: CaptureConfig | None,
        calls: int,
        threads: int,
    ) -> None:
        tensors.quiet_overflow_warnings()
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
        # `threads` workers, of which `calls` run the model at once. On 2 CPUs, 2 calls and no
        # worker more: 0.76-0.82 of raw ONNX Runtime on 300,000 CSV rows; with a third worker
        # parsing ahead 0.59-0.67 (three busy threads on two cores, and the GIL among them).
        self.calls = threading.BoundedSemaphore(calls)
        self.threads = threads
        self.pool = concurrent.futures.ThreadPoolExecutor(self.threads, thread_name_prefix="berth-transform")

    def run(self) -> Summary:
        options = self.options
        try:
            objects = storage.list_inputs(options.input_uri, exclude_uri=options.output_uri)
        except storage.StorageError as error:
            raise StorageFailure(str(error)) from None
        mine = shard(objects, options.shard_index, options.shard_count)
        self.summary.objects = len(mine)
        self.listener.started(len(mine))
        output_root = storage.parse_uri(options.output_uri)
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
                self._transform_object(location, target, errors)
                self.summary.done += 1
                self.listener.object_finished(relative, skipped=False)
        except storage.StorageError as error:
            raise StorageFailure(str(error)) from None
        finally:
            self.pool.shutdown(wait=True)
            if self.capture is not None:
                self.capture.finish(self.summary)
        self.summary.failed = self.budget.spent
        self.listener.finished(self.summary)
        return self.summary

    def _transform_object(
        self, source: storage.Location, target: storage.Location, errors_at: storage.Location
    ) -> None:
        options = self.options
        uri = source.uri
        writer = storage.open_output(target)
        stream = storage.open_input(source)
        try:
            try:
                blocks = read_blocks(
                    open_records(stream, options.compression),
                    content_type=options.content_type,
                    split_type=options.split_type,
                    max_bytes=options.max_payload_bytes,
                    max_rows=options.max_batch_size,
                )
                flow = _Flow(self, blocks, writer, uri)
                flow.run()  # every worker is done with the stream and the writer when it returns
            except InputError as error:
                raise TransformError(f"{uri}: {error}") from None
            except (OSError, EOFError) as error:  # a bad or truncated gzip stream, a broken connection
                raise TransformError(f"{uri}: cannot read: {error}") from None
            if flow.bad:
                flow.bad.sort(key=lambda record: record.line)  # the outputFilter's come late
                listing = (orjson.dumps({"line": b.line, "error": b.message}) + b"\n" for b in flow.bad)
                storage.write_object(errors_at, listing)
        except BaseException:
            writer.abort()
            raise
        finally:
            stream.close()
        writer.commit()

    def compute(self, block: Block, uri: str) -> _Result:
        """On a worker: one block parsed, run through the model and encoded; any order."""
        parsed = self.parser.parse(block)
        if not parsed.rows:  # blank lines, or only malformed records
            return _Result(parsed.bad, 0, None, [], [], [])
        feed = parsed.feed
        try:
            if not self.single or parsed.rows == 1:
                with self.calls:
                    outputs = self.model.run(feed)
            else:
                calls = []
                for row in range(parsed.rows):
                    with self.calls:
                        calls.append(
                            self.model.run({name: array[row : row + 1] for name, array in feed.items()})
                        )
                outputs = merge_outputs(calls)
        except Exception as error:
            raise TransformError(
                f"{uri}: records from line {block.first_line}: the model failed: {error}"
            ) from None
        failed: list[BadRecord] = []
        if self.output_filter is None:
            data = self.assembler.encode(outputs, parsed.lines)
        else:
            data, skipped = self.assembler.encode_filtered(outputs, parsed.lines)
            failed = [BadRecord(parsed.numbers[index], message) for index, message in skipped]
        return _Result(parsed.bad, parsed.rows, data, outputs, parsed.lines, failed)

    def commit(
        self, result: _Result, writer: storage.AtomicWriter, uri: str, bad_here: list[BadRecord]
    ) -> None:
        """One block's answers appended: blocks in input order, one at a time."""
        if result.bad:
            self.budget.spend(uri, result.bad)
            bad_here.extend(result.bad)
        if result.data is None:
            return
        writer.write(result.data)
        if self.capture is not None:
            written = result.data if self.output_filter is None else None
            self.capture.offer(result.outputs, result.lines, written)
        records = result.rows - len(result.failed)
        self.summary.records += records
        if result.failed:  # records the outputFilter could not select from
            self.budget.spend(uri, result.failed)
            bad_here.extend(result.failed)
        self.listener.records_done(records)


@dataclass
class _Result:
    """A block's outcome, waiting for its turn to be written."""

    bad: list[BadRecord]  # malformed records, by line
    rows: int
    data: bytes | None  # the encoded answers (None: nothing to write)
    outputs: list[Any]
    lines: list[bytes]
    failed: list[BadRecord]  # records the outputFilter skipped


class _Flow:
    """One object's blocks through the workers, each of which takes the next block (reading is
    one at a time), parses it, runs the model and encodes the answers, all outside the GIL but
    for moments, and leaves the result for the writer's turn. Whichever worker completes the
    next block in input order appends it and any that wait behind it, so no worker waits for
    another to write. No hand-off to a stage's thread per batch: on 2 CPUs, 300,000 CSV rows,
    two workers that each do everything ran at 0.77 of raw ONNX Runtime (median of 3 rounds),
    a parse, an infer and a write thread with the event loop between them at 0.67.

    At most WINDOW blocks per worker are read before they are written: memory stays flat. The
    first failure in input order wins (a malformed record over the budget, a bad stream, the
    model failing); the workers then stop at their next block."""

    WINDOW = 2

    def __init__(self, run: _Run, blocks: Iterator[Block], writer: storage.AtomicWriter, uri: str) -> None:
        self.owner = run
        self.blocks = blocks
        self.writer = writer
        self.uri = uri
        self.bad: list[BadRecord] = []
        self.reading = threading.Lock()  # next(blocks): one reader at a time
        self.state = threading.Condition()  # everything below
        self.taken = 0  # blocks read
        self.written = 0  # blocks committed, in order
        self.waiting: dict[int, _Result | BaseException] = {}
        self.committer = False  # a worker is appending
        self.exhausted = False
        self.stopping = False
        self.error: BaseException | None = None

    def run(self) -> None:
        owner = self.owner
        futures = [owner.pool.submit(self._work) for _ in range(owner.threads)]
        try:
            concurrent.futures.wait(futures)
        except BaseException:  # SIGTERM's SystemExit, Ctrl-C: stop, and let go of the stream
            self._stop(None)
            _settle(futures)
            raise
        for future in futures:
            future.result()  # a fault of the workers' own
        if self.error is not None:
            raise self.error

    def _work(self) -> None:
        try:
            while True:
                with self.state:
                    while not self.stopping and self.taken - self.written >= self.WINDOW * self.owner.threads:
                        self.state.wait()
                    if self.stopping or self.exhausted:
                        return
                with self.reading:
                    if self.exhausted:
                        return
                    outcome: Block | BaseException | None
                    try:
                        outcome = next(self.blocks, None)
                    except BaseException as error:  # a bad stream: reported in its turn
                        outcome = error
                    if outcome is None or isinstance(outcome, BaseException):
                        self.exhausted = True
                    if outcome is None:
                        return
                    with self.state:
                        sequence = self.taken
                        self.taken += 1
                if isinstance(outcome, BaseException):
                    self._finished(sequence, outcome)
                    return
                try:
                    result: _Result | BaseException = self.owner.compute(outcome, self.uri)
                except BaseException as error:
                    result = error
                self._finished(sequence, result)
        except BaseException as error:  # not expected: stop the others rather than hang them
            self._stop(error)
            raise

    def _finished(self, sequence: int, result: _Result | BaseException) -> None:
        with self.state:
            self.waiting[sequence] = result
            if self.committer:
                return  # the worker appending now takes it in its turn
            self.committer = True
        while True:
            with self.state:
                item = None if self.stopping else self.waiting.pop(self.written, None)
                if item is None:
                    self.committer = False
                    self.state.notify_all()
                    return
            try:
                if isinstance(item, BaseException):
                    raise item
                self.owner.commit(item, self.writer, self.uri, self.bad)
            except BaseException as error:
                with self.state:
                    self.committer = False
                self._stop(error)
                return
            with self.state:
                self.written += 1
                self.state.notify_all()

    def _stop(self, error: BaseException | None) -> None:
        with self.state:
            if error is not None and self.error is None:
                self.error = error
            self.stopping = True
            self.state.notify_all()


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


def _settle(futures: Any) -> None:
    """Wait for work handed to a stage's thread to end, whatever its outcome (a failure is
    already being reported)."""
    for future in list(futures):
        with contextlib.suppress(BaseException):
            future.result()
