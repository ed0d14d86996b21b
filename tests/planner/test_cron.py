"""Cron schedules: known fire times, cron's day-of-month / day-of-week rule, and what is refused."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from berth_operator.api import MonitoringSchedule
from berth_operator.planner.cron import CronError, next_after, parse

from tests.crds.test_crds_admission import Row
from tests.crds.test_monitoring_admission import GOOD


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


KNOWN = [
    ("*/15 * * * *", "2026-12-03T10:07:30", "2026-12-03T10:15:00"),
    ("*/15 * * * *", "2026-12-03T10:15:00", "2026-12-03T10:30:00"),  # strictly after
    ("*/15 * * * *", "2026-12-03T23:59:59", "2026-12-04T00:00:00"),
    ("* * * * *", "2026-12-03T10:07:00.000001", "2026-12-03T10:08:00"),
    ("0 9 * * 1-5", "2026-12-04T09:00:00", "2026-12-07T09:00:00"),  # Friday -> Monday
    ("0 9 * * 1-5", "2026-12-07T08:59:00", "2026-12-07T09:00:00"),
    ("@hourly", "2026-12-03T10:00:00", "2026-12-03T11:00:00"),
    ("@daily", "2026-12-03T10:00:00", "2026-12-04T00:00:00"),
    ("@midnight", "2026-12-31T23:59:00", "2027-01-01T00:00:00"),
    ("@weekly", "2026-12-03T10:00:00", "2026-12-06T00:00:00"),  # Thursday -> Sunday
    ("@monthly", "2026-12-03T10:00:00", "2027-01-01T00:00:00"),
    ("@yearly", "2026-12-03T10:00:00", "2027-01-01T00:00:00"),
    ("@annually", "2027-01-01T00:00:00", "2028-01-01T00:00:00"),
    ("0 0 31 * *", "2027-01-31T00:00:00", "2027-03-31T00:00:00"),  # February has no 31st
    ("0 0 31 * *", "2027-03-31T00:00:00", "2027-05-31T00:00:00"),  # nor April
    ("0 0 29 2 *", "2026-03-01T00:00:00", "2028-02-29T00:00:00"),  # the next leap year
    # both restricted: the 13th or any Friday (2026-12-04 is a Friday, 2026-12-13 a Sunday)
    ("0 0 13 * 5", "2026-12-03T00:00:00", "2026-12-04T00:00:00"),
    ("0 0 13 * 5", "2026-12-11T00:00:00", "2026-12-13T00:00:00"),
    # only the day of month restricted: the 13th, whatever its weekday
    ("0 0 13 * *", "2026-12-03T00:00:00", "2026-12-13T00:00:00"),
    # */2 restricts the day of week (robfig/cron, as the CronJob controller): OR with the 13th
    ("0 0 13 * */2", "2026-12-07T00:00:00", "2026-12-08T00:00:00"),  # Monday -> Tuesday (2)
    ("0 0 1/2 * *", "2026-12-03T01:00:00", "2026-12-05T00:00:00"),  # X/S: from X to the end
    ("30 8-18/5 * * *", "2026-12-03T13:30:00", "2026-12-03T18:30:00"),
    ("0 0,12 1 * *", "2026-12-01T00:00:00", "2026-12-01T12:00:00"),
    ("0 0,12 1 * *", "2026-12-01T12:00:00", "2027-01-01T00:00:00"),
    ("5 4 * 6 0", "2026-12-03T00:00:00", "2027-06-06T04:05:00"),  # a Sunday in June
]


@pytest.mark.parametrize(("schedule", "after", "expected"), KNOWN)
def test_next_after(schedule: str, after: str, expected: str) -> None:
    assert next_after(schedule, at(after)) == at(expected)


def test_an_offset_is_converted_and_the_answer_is_utc() -> None:
    paris = timezone(timedelta(hours=1))
    found = next_after("0 9 * * *", datetime(2026, 12, 3, 9, 30, tzinfo=paris))  # 08:30 UTC
    assert found == at("2026-12-03T09:00:00") and found.tzinfo == UTC
    assert next_after("0 9 * * *", datetime(2026, 12, 3, 8, 30)) == at("2026-12-03T09:00:00")  # naive: UTC


def test_every_fire_of_a_day_in_order() -> None:
    moment, fires = at("2026-12-03T00:00:00"), []
    for _ in range(5):
        moment = next_after("*/20 9-10 * * *", moment)
        fires.append(moment.strftime("%H:%M"))
    assert fires == ["09:00", "09:20", "09:40", "10:00", "10:20"]


REFUSED = [
    ("0 * * *", "has 4 fields, not 5"),
    ("0 0 * * * *", "has 6 fields, not 5"),
    ("60 * * * *", "minute '60': 60 is outside 0-59"),
    ("0 24 * * *", "hour '24': 24 is outside 0-23"),
    ("0 0 0 * *", "day of month '0': 0 is outside 1-31"),
    ("0 0 * 13 *", "month '13': 13 is outside 1-12"),
    ("0 0 * * 7", "day of week '7': 7 is outside 0-6"),
    ("*/0 * * * *", "minute '*/0': a step must be at least 1"),
    ("5-1 * * * *", "minute '5-1': the range starts after it ends"),
    ("1,,2 * * * *", "minute '1,,2': an empty item in the list"),
    ("1-2-3 * * * *", "minute '1-2-3': '2-3' is not a number"),
    ("-5 * * * *", "minute '-5': '' is not a number"),
    ("0 0 30 2 *", "never fires"),
    ("@often", "is not one of @yearly"),
]


@pytest.mark.parametrize(("schedule", "message"), REFUSED)
def test_refused_naming_the_field(schedule: str, message: str) -> None:
    with pytest.raises(CronError, match=message.replace("*", r"\*")):
        parse(schedule)


def test_no_such_day_but_a_weekday_fires() -> None:
    # 30 February OR a Monday of February: the Mondays fire (2027-02-01 is one).
    assert next_after("0 0 30 2 1", at("2026-12-03T00:00:00")) == at("2027-02-01T00:00:00")


@pytest.mark.parametrize("row", GOOD, ids=lambda row: row.id)
def test_every_schedule_admission_admits_parses(row: Row) -> None:
    schedule = MonitoringSchedule.model_validate(row.obj).spec.schedule
    first = next_after(schedule, at("2026-12-03T10:07:30"))
    assert next_after(schedule, first) > first
