"""Cron schedules as a CronJob reads them: parse, and the next fire time after a moment (UTC).

Pure. The forms are those the MonitoringSchedule CRD admits (api.monitoringschedule.CRON): five
fields of digits, `*`, `/`, `-` and commas, or a macro (@hourly, @daily, @midnight, @weekly,
@monthly, @yearly, @annually). The rules are those of the parser Kubernetes' CronJob controller
uses (robfig/cron's standard parser), so local mode fires when a cluster would:

- fields: minute 0-59, hour 0-23, day of month 1-31, month 1-12, day of week 0-6 (Sunday 0);
- `A-B` a range, `X/S` every S from X to the field's end, `A-B/S` and `*/S` steps;
- day of month and day of week: when both are restricted, a day matching either fires (cron's
  OR rule); when one of them is `*` (or `*/1`), only the other restricts. `*/2` is a
  restriction, as in robfig/cron (Vixie cron would call it unrestricted).

The CronJob runs with timeZone Etc/UTC, so every time here is UTC.
"""

from __future__ import annotations

from calendar import monthrange
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
FIELDS = (  # name, lowest, highest
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day of month", 1, 31),
    ("month", 1, 12),
    ("day of week", 0, 6),
)
LONGEST_MONTH = {1: 31, 2: 29, 3: 31, 4: 30, 5: 31, 6: 30, 7: 31, 8: 31, 9: 30, 10: 31, 11: 30, 12: 31}
# A Feb 29 that is also restricted to no weekday comes back within 8 years (2096 -> 2104).
SEARCH_DAYS = 366 * 9


class CronError(ValueError):
    """The schedule cannot be read; the message names the field and the part."""


@dataclass(frozen=True)
class Cron:
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]  # of the month
    months: frozenset[int]
    weekdays: frozenset[int]  # Sunday 0
    days_unrestricted: bool  # day of month was `*`
    weekdays_unrestricted: bool  # day of week was `*`

    def day_matches(self, day: date) -> bool:
        in_month = day.day in self.days
        in_week = (day.weekday() + 1) % 7 in self.weekdays
        if self.days_unrestricted or self.weekdays_unrestricted:
            return in_month and in_week
        return in_month or in_week


def _number(text: str, name: str, part: str) -> int:
    if not text.isdigit():
        raise CronError(f"{name} {part!r}: {text!r} is not a number")
    return int(text)


def _field(text: str, name: str, low: int, high: int) -> tuple[frozenset[int], bool]:
    """The values of one field, and whether it is unrestricted (`*` or `*/1`)."""
    values: set[int] = set()
    star = False
    for part in text.split(","):
        if not part:
            raise CronError(f"{name} {text!r}: an empty item in the list")
        span, _, step_text = part.partition("/")
        step = _number(step_text, name, part) if step_text else 1
        if step == 0:
            raise CronError(f"{name} {part!r}: a step must be at least 1")
        if span == "*":
            start, end = low, high
            star = star or step == 1
        else:
            first, dash, last = span.partition("-")
            start = _number(first, name, part)
            end = _number(last, name, part) if dash else (high if step_text else start)
            for value in (start, end):
                if not low <= value <= high:
                    raise CronError(f"{name} {part!r}: {value} is outside {low}-{high}")
            if start > end:
                raise CronError(f"{name} {part!r}: the range starts after it ends")
        values.update(range(start, end + 1, step))
    return frozenset(values), star


def parse(schedule: str) -> Cron:
    """The schedule's fields; CronError says which one cannot be read."""
    text = schedule.strip()
    if text.startswith("@"):
        if text not in MACROS:
            raise CronError(f"{text!r} is not one of {', '.join(MACROS)}")
        text = MACROS[text]
    parts = text.split()
    if len(parts) != len(FIELDS):
        raise CronError(
            f"{schedule!r} has {len(parts)} fields, not 5 (minute hour day-of-month month day-of-week)"
        )
    found = [_field(part, name, low, high) for part, (name, low, high) in zip(parts, FIELDS, strict=True)]
    (minutes, _), (hours, _), (days, days_star), (months, _), (weekdays, weekdays_star) = found
    cron = Cron(minutes, hours, days, months, weekdays, days_star, weekdays_star)
    if weekdays_star and not any(d <= LONGEST_MONTH[m] for m in months for d in days):
        raise CronError(f"{schedule!r} never fires: no month of it has that day of the month")
    return cron


def next_after(schedule: str | Cron, moment: datetime) -> datetime:
    """The first fire time strictly after `moment` (a naive moment is read as UTC), in UTC."""
    cron = parse(schedule) if isinstance(schedule, str) else schedule
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    start = moment.astimezone(UTC).replace(second=0, microsecond=0) + timedelta(minutes=1)
    hours, minutes = sorted(cron.hours), sorted(cron.minutes)
    day = start.date()
    for _ in range(SEARCH_DAYS):
        if (
            day.month in cron.months
            and day.day <= monthrange(day.year, day.month)[1]
            and cron.day_matches(day)
        ):
            earliest = (start.hour, start.minute) if day == start.date() else (0, 0)
            for hour in hours:
                if hour < earliest[0]:
                    continue
                for minute in minutes:
                    if (hour, minute) >= earliest:
                        return datetime(day.year, day.month, day.day, hour, minute, tzinfo=UTC)
        day += timedelta(days=1)
    raise CronError(f"no fire time within {SEARCH_DAYS} days of {start.isoformat()}")  # parse() prevents it
