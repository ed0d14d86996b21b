"""Which line explains a crashed replica (pure)."""

from __future__ import annotations

from berth_operator.local.replica import crash_reason


def test_the_last_error_record_wins_over_shutdown_lines() -> None:
    lines = [
        '{"level":"info","message":"Started server process [1]"}\n',
        '{"level":"error","logger":"berth.serving","message":"model load failed","error":"cannot load /m.onnx"}\n',
        '{"level":"info","message":"Shutting down"}\n',
        '{"level":"info","message":"Finished server process [1]"}\n',
    ]
    assert crash_reason(lines) == "model load failed: cannot load /m.onnx"


def test_a_traceback_gives_its_last_line() -> None:
    lines = [
        "Traceback (most recent call last):\n",
        '  File "x.py", line 1\n',
        "ValueError: bad input\n",
        "\n",
    ]
    assert crash_reason(lines) == "ValueError: bad input"


def test_nothing_to_say() -> None:
    assert crash_reason([]) == ""
    assert crash_reason(['{"level":"info","message":"bye"}']) == ""
