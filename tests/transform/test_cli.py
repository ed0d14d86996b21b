"""`berth transform` as a process: exit codes, messages, termination message, progress, kill and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.transform.conftest import S3_ENV
from tests.transform.support import BERTH, berth_env, csv_bytes, raw_outputs, rows, run_berth, write_csv

pytestmark = pytest.mark.timeout(120)


def test_runs_and_reports_counts(transform_models: SimpleNamespace, tmp_path: Path) -> None:
    for i in range(2):
        write_csv(tmp_path / "in" / f"p{i}.csv", rows(40, 4, seed=i))
    log = tmp_path / "termination-log"
    args = ["transform", "--model", str(transform_models.logreg), "--input", str(tmp_path / "in")]
    result = run_berth(
        [*args, "--output", str(tmp_path / "out"), "--progress"], berth_env(BERTH_TERMINATION_LOG=str(log))
    )
    assert result.returncode == 0, result.stderr
    assert "\r[####################] 2/2 objects  80 records" in result.stderr  # the progress line
    assert "2 objects done, 0 already done, 80 records, 0 malformed" in result.stderr
    assert json.loads(log.read_text()) == {"objects": 2, "done": 2, "skipped": 0, "records": 80, "failed": 0}
    again = run_berth([*args, "--output", str(tmp_path / "out")], berth_env(BERTH_TERMINATION_LOG=str(log)))
    assert again.returncode == 0 and "\r" not in again.stderr  # not a terminal: no progress line
    assert json.loads(log.read_text())["skipped"] == 2


def test_malformed_record_exits_1_with_file_and_line(
    transform_models: SimpleNamespace, tmp_path: Path
) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "x.csv").write_bytes(csv_bytes(rows(3, 4)) + b"1,2,three,4\n")
    log = tmp_path / "termination-log"
    args = ["transform", "--model", str(transform_models.logreg), "--input", str(tmp_path / "in" / "x.csv")]
    result = run_berth([*args, "--output", str(tmp_path / "out")], berth_env(BERTH_TERMINATION_LOG=str(log)))
    assert result.returncode == 1
    expected = f"malformed record at {tmp_path}/in/x.csv:4: not a row of numbers separated by commas"
    assert f"berth transform: {expected}" in result.stderr
    assert log.read_text() == expected
    assert not (tmp_path / "out" / "x.csv.out").exists()


def test_bad_options_are_usage_errors(transform_models: SimpleNamespace, tmp_path: Path) -> None:
    base = ["transform", "--model", str(transform_models.logreg), "--input", "in/", "--output", "out/"]
    result = run_berth([*base, "--content-type", "application/x-npy"])
    assert result.returncode == 2 and "needs --split-type None" in result.stderr
    result = run_berth([*base, "--join-source", "Input", "--assemble-with", "None"])
    assert result.returncode == 2 and "--join-source Input needs" in result.stderr


def test_killed_run_resumes_without_duplicates(transform_models: SimpleNamespace, tmp_path: Path) -> None:
    count, per_object = 30, 4000
    for i in range(count):
        write_csv(tmp_path / "in" / f"p{i:02d}.csv", rows(per_object, 8, seed=i))
    out = tmp_path / "out"
    command = [*BERTH, "transform", "--model", str(transform_models.mlp), "--input", str(tmp_path / "in")]
    command += ["--output", str(out), "--max-batch-size", "8", "--max-concurrent-transforms", "1"]

    def finished() -> list[str]:  # pathlib's * also matches the hidden partial objects
        return sorted(p.name for p in out.glob("*.out") if not p.name.startswith("."))

    def partials() -> list[Path]:
        return list(out.glob(".berth-partial-*"))

    # Stopped, not just killed, where a partial object is on disk: a kill that lands between one
    # object's rename and the next one's open would leave none, and the test would prove nothing.
    process = subprocess.Popen(command, env=berth_env(), stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert time.monotonic() < deadline and process.poll() is None, "no partial object seen mid-run"
            if finished() and partials():
                process.send_signal(signal.SIGSTOP)
                os.waitpid(process.pid, os.WUNTRACED)  # returns once it is stopped
                if partials() and len(finished()) < count:
                    break
                process.send_signal(signal.SIGCONT)
            time.sleep(0.02)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(10)
    finished_before = finished()
    assert 0 < len(finished_before) < count, "the run was not interrupted mid-way"
    assert partials(), "the killed run should have left a partial object behind"
    result = run_berth(command[1:], timeout=90)
    assert result.returncode == 0, result.stderr
    assert (
        f"{count - len(finished_before)} objects done, {len(finished_before)} already done" in result.stderr
    )
    assert sorted(p.name for p in out.iterdir()) == [f"p{i:02d}.csv.out" for i in range(count)]  # no partials
    for i in (0, count - 1):
        [expected] = raw_outputs(transform_models.mlp, rows(per_object, 8, seed=i))
        written = (out / f"p{i:02d}.csv.out").read_text().splitlines()
        assert len(written) == per_object
        assert [float(v) for v in written[-1].split(",")] == pytest.approx(
            expected[-1].tolist(), rel=1e-5, abs=1e-6
        )


def test_pod_mode_s3_shard_from_job_completion_index(
    transform_models: SimpleNamespace, s3: SimpleNamespace, tmp_path: Path
) -> None:
    s3.client.upload_file(str(transform_models.logreg), s3.bucket, "model/logreg.onnx")
    for i in range(4):
        s3.client.put_object(Bucket=s3.bucket, Key=f"in/p{i}.csv", Body=csv_bytes(rows(10, 4, seed=i)))
    env = berth_env(**S3_ENV, AWS_ENDPOINT_URL=s3.endpoint, JOB_COMPLETION_INDEX="1")
    bucket = f"s3://{s3.bucket}"
    args = ["transform", "--model", f"{bucket}/model/logreg.onnx", "--input", f"{bucket}/in/"]
    result = run_berth([*args, "--output", f"{bucket}/out/", "--shard-count", "2"], env)
    assert result.returncode == 0, result.stderr
    listing = s3.client.list_objects_v2(Bucket=s3.bucket, Prefix="out/")
    assert sorted(item["Key"] for item in listing["Contents"]) == ["out/p1.csv.out", "out/p3.csv.out"]


# --- where the output goes: mistakes are usage errors (exit 2, never retried) -----------------------


@pytest.mark.parametrize(
    ("output", "says"),
    [
        ("in", "the output prefix {tmp}/in holds the input {tmp}/in/x.csv"),
        ("{tmp}", "the output prefix {tmp} holds the input {tmp}/in/x.csv"),
        ("outfile", "the output {tmp}/outfile is an existing file"),
    ],
    ids=["beside the input file", "above it", "an existing file"],
)
def test_an_output_that_cannot_work_is_a_one_line_usage_error(
    transform_models: SimpleNamespace, tmp_path: Path, output: str, says: str
) -> None:
    write_csv(tmp_path / "in" / "x.csv", rows(5, 4))
    (tmp_path / "outfile").write_text("not a directory")
    log = tmp_path / "termination-log"
    target = output.format(tmp=tmp_path) if output.startswith("{") else str(tmp_path / output)
    args = ["transform", "--model", str(transform_models.logreg), "--input", str(tmp_path / "in" / "x.csv")]
    result = run_berth([*args, "--output", target], berth_env(BERTH_TERMINATION_LOG=str(log)))
    assert result.returncode == 2, result.stderr  # EXIT_USAGE: the Job's podFailurePolicy fails the Job
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("berth transform: " + says.format(tmp=tmp_path)), line
    assert log.read_text() == line.removeprefix("berth transform: ")
    assert sorted(p.name for p in (tmp_path / "in").iterdir()) == ["x.csv"]


def test_a_directory_input_under_its_output_is_a_usage_error(
    transform_models: SimpleNamespace, tmp_path: Path
) -> None:
    write_csv(tmp_path / "data" / "in" / "x.csv", rows(5, 4))
    args = ["transform", "--model", str(transform_models.logreg), "--input", str(tmp_path / "data" / "in")]
    result = run_berth([*args, "--output", str(tmp_path / "data")])
    assert result.returncode == 2, result.stderr
    assert "holds the input" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_exit_codes_are_the_planners() -> None:
    """The Job's podFailurePolicy fails the Job on these codes: the CLI must use the same ones."""
    from berth_operator.planner import transform as planner
    from berth_serving.transform import cli

    assert (cli.EXIT_DATA, cli.EXIT_USAGE) == (planner.EXIT_DATA, planner.EXIT_USAGE) == (1, 2)


# --- SIGTERM --------------------------------------------------------------------------------------


def test_sigterm_removes_the_scratch_directory_and_partial_output(
    transform_models: SimpleNamespace, tmp_path: Path
) -> None:
    import tarfile

    archive = tmp_path / "model.tar.gz"  # unpacked into the scratch directory
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(transform_models.mlp, arcname="model/mlp.onnx")
    for i in range(3):
        write_csv(tmp_path / "in" / f"p{i}.csv", rows(20_000, 8, seed=i))
    scratch_root = tmp_path / "tmp"
    scratch_root.mkdir()
    out = tmp_path / "out"
    command = [
        *BERTH,
        "transform",
        "--model",
        str(archive),
        "--input",
        str(tmp_path / "in"),
        "--output",
        str(out),
    ]
    command += ["--max-batch-size", "4", "--max-concurrent-transforms", "1"]
    log = tmp_path / "termination-log"
    process = subprocess.Popen(
        command,
        env=berth_env(TMPDIR=str(scratch_root), BERTH_TERMINATION_LOG=str(log)),
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not list(out.glob(".berth-partial-*")):
            time.sleep(0.02)
        assert list(scratch_root.glob("berth-transform-*/model/mlp.onnx")), "the model is unpacked by now"
        assert list(out.glob(".berth-partial-*")), "the run should be writing an output by now"
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    assert process.returncode == 128 + signal.SIGTERM, stderr.decode()
    # (ONNX Runtime's own library leaves a 51-byte $TMPDIR/.ses behind on import, in any run)
    assert list(scratch_root.glob("berth-transform-*")) == [], "the scratch directory was left behind"
    assert list(out.glob(".berth-partial-*")) == [], "the partial output was left behind"
    assert "stopped by SIGTERM" in log.read_text()
    assert "Traceback" not in stderr.decode()


# --- a record larger than maxPayloadBytes ------------------------------------------------------------


def peak_rss_bytes(command: list[str], env: dict[str, str]) -> tuple[int, int, str]:
    """(exit code, peak RSS of that process alone, stderr): wait4 gives the child's own rusage."""
    import os

    with open(os.devnull, "wb") as devnull, tempfile.TemporaryFile() as errors:
        process = subprocess.Popen(command, env=env, stdout=devnull, stderr=errors)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        errors.seek(0)
        return process.returncode, usage.ru_maxrss * 1024, errors.read().decode()


@pytest.mark.timeout(180)
def test_a_huge_line_is_a_malformed_record_read_in_bounded_memory(
    transform_models: SimpleNamespace, tmp_path: Path
) -> None:
    line_bytes = 32 * 2**20
    good = csv_bytes(rows(200, 4))
    (tmp_path / "small").mkdir()
    (tmp_path / "small" / "x.csv").write_bytes(good + good)
    (tmp_path / "huge").mkdir()
    with (tmp_path / "huge" / "x.csv").open("wb") as out:
        out.write(good)
        out.write(b"0.5," * (line_bytes // 4) + b"\n")  # line 201: 32 MiB, a record no payload holds
        out.write(good)
    limit = str(2**20)
    env = berth_env(BERTH_TERMINATION_LOG=str(tmp_path / "log"))

    def run(name: str) -> tuple[int, int, str]:
        command = [
            *BERTH,
            "transform",
            "--model",
            str(transform_models.logreg),
            "--input",
            str(tmp_path / name),
        ]
        command += [
            "--output",
            str(tmp_path / f"{name}-out"),
            "--max-payload-bytes",
            limit,
            "--max-errors",
            "1",
        ]
        return peak_rss_bytes(command, env)

    code, baseline, stderr = run("small")
    assert code == 0, stderr
    code, peak, stderr = run("huge")
    assert code == 0, stderr
    assert "400 records, 1 malformed" in stderr
    errors = (tmp_path / "huge-out" / "x.csv.errors").read_text().splitlines()
    assert errors == [
        '{"line":201,"error":"a record of 33554432 bytes, over the payload limit (maxPayloadBytes) of 1048576"}'
    ]
    assert (tmp_path / "huge-out" / "x.csv.out").read_bytes() == (
        tmp_path / "small-out" / "x.csv.out"
    ).read_bytes()
    growth = peak - baseline
    assert growth < line_bytes / 4, (
        f"peak RSS grew {growth / 2**20:.1f} MiB for a {line_bytes / 2**20:.0f} MiB line"
    )


def test_a_huge_line_without_an_error_budget_fails_with_file_and_line(
    transform_models: SimpleNamespace, tmp_path: Path
) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "x.csv").write_bytes(csv_bytes(rows(3, 4)) + b"1," * 600_000 + b"\n")
    args = ["transform", "--model", str(transform_models.logreg), "--input", str(tmp_path / "in" / "x.csv")]
    result = run_berth([*args, "--output", str(tmp_path / "out"), "--max-payload-bytes", "1000000"])
    assert result.returncode == 1, result.stderr
    assert (
        f"malformed record at {tmp_path}/in/x.csv:4: a record of 1200000 bytes, over the payload limit"
        in (result.stderr)
    )


def test_plain_numbers_are_transformed_without_importing_pyarrow(
    transform_models: SimpleNamespace, tmp_path: Path
) -> None:
    """Arrow is the fallback for blocks the C parser refuses; its import would only slow every
    start. A block it must take (a quoted field, a NaN to write) still works: test_blocks.py."""
    write_csv(tmp_path / "in" / "x.csv", rows(20, 4))
    (tmp_path / "in" / "y.jsonl").write_bytes(b"[1.0,2.0,3.0,4.0]\n[5,6,7,8]\n")
    script = (
        "import sys\n"
        "from berth_serving.transform.cli import transform\n"
        "for name, kind in (('x.csv', 'text/csv'), ('y.jsonl', 'application/jsonlines')):\n"
        "    try:\n"
        f"        transform(['--model', {str(transform_models.logreg)!r}, '--content-type', kind,\n"
        f"                   '--input', {str(tmp_path / 'in')!r} + '/' + name, '--output', {str(tmp_path / 'out')!r}])\n"
        "    except SystemExit as done:\n"
        "        assert done.code == 0, done.code\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'pyarrow'))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=berth_env())
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
    assert len((tmp_path / "out" / "x.csv.out").read_text().splitlines()) == 20
    assert len((tmp_path / "out" / "y.jsonl.out").read_text().splitlines()) == 2
