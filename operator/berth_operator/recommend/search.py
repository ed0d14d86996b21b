"""The inference recommender's decisions, pure: which candidates to measure, how far to push the
load, what a measured curve says, and which candidate to recommend.

A candidate is an instance type of the catalog with runtime settings (intra-op threads, max batch
size). Each is measured with a stepped load: concurrency doubles until the p99 target breaks, the
errors start, or the throughput stops rising. The best step within the target is the candidate's
capacity; the replicas needed for the wanted rate follow, and the cost from the catalog's
pricePerHour. The cheapest candidate that meets the target is recommended (fewer replicas, then
lower p99, when no prices are given).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..quantity import to_bytes
from ..settings import InstanceType

FIRST_CONCURRENCY = 1
MAX_CONCURRENCY = 256
# A step that adds less than this share of throughput ends the search: the candidate is saturated.
MIN_GAIN = 0.05
MAX_ERROR_RATE = 0.01  # more failed requests than this in a step ends the search


@dataclass(frozen=True)
class Candidate:
    instance_type: str
    cpus: int  # cores the type gives (its CPU limit, else request), at least 1
    memory_bytes: int | None  # the type's memory limit, if any
    intra_op_threads: int
    max_batch_size: int
    price_per_hour: float | None = None

    @property
    def label(self) -> str:
        return f"{self.instance_type} threads={self.intra_op_threads} batch={self.max_batch_size}"


@dataclass(frozen=True)
class Step:
    """One load level: what the load generator measured at this concurrency."""

    concurrency: int
    requests: int
    failures: int
    seconds: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    generator_busy: float = 0.0  # share of a core the load generator used: near 1 means it capped

    @property
    def rps(self) -> float:
        return (self.requests - self.failures) / self.seconds if self.seconds > 0 else 0.0

    @property
    def error_rate(self) -> float:
        return self.failures / self.requests if self.requests else 1.0


@dataclass(frozen=True)
class Outcome:
    """A candidate's curve and what it says against the targets."""

    candidate: Candidate
    steps: tuple[Step, ...]
    p99_target_ms: float
    wanted_rps: float
    emulated_cpus: int  # cores it really had here (a machine may have fewer than the type)
    peak_rss_bytes: int | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def best(self) -> Step | None:
        """The step with the most throughput whose p99 and errors are within the target."""
        within = [s for s in self.steps if s.p99_ms <= self.p99_target_ms and s.error_rate <= MAX_ERROR_RATE]
        return max(within, key=lambda s: s.rps, default=None)

    @property
    def meets_target(self) -> bool:
        return self.best is not None and self.fits_memory

    @property
    def fits_memory(self) -> bool:
        limit = self.candidate.memory_bytes
        return limit is None or self.peak_rss_bytes is None or self.peak_rss_bytes <= limit

    @property
    def replicas(self) -> int | None:
        best = self.best
        if best is None or best.rps <= 0:
            return None
        return max(1, math.ceil(self.wanted_rps / best.rps))

    @property
    def cost_per_hour(self) -> float | None:
        price, replicas = self.candidate.price_per_hour, self.replicas
        return None if price is None or replicas is None else price * replicas

    @property
    def cost_per_million(self) -> float | None:
        """What a million inferences cost on one replica running at its capacity."""
        price, best = self.candidate.price_per_hour, self.best
        if price is None or best is None or best.rps <= 0:
            return None
        return price / (best.rps * 3600) * 1_000_000


def cpus_of(instance_type: InstanceType) -> int:
    """Whole cores of the type: its CPU limit, else its request (at least one)."""
    quantities = instance_type.resources
    value = quantities.limits.get("cpu", quantities.requests.get("cpu"))
    if value is None:
        return 1
    text = str(value)
    cores = float(text[:-1]) / 1000 if text.endswith("m") else float(text)
    return max(1, math.floor(cores))


def memory_of(instance_type: InstanceType) -> int | None:
    quantities = instance_type.resources
    value = quantities.limits.get("memory", quantities.requests.get("memory"))
    return None if value is None else to_bytes(value)


def thread_choices(cpus: int) -> list[int]:
    """Intra-op threads worth trying on cpus cores: 1, then powers of two up to all of them."""
    choices = {1, cpus}
    power = 2
    while power < cpus:
        choices.add(power)
        power *= 2
    return sorted(choices)


def candidates(
    catalog: dict[str, InstanceType],
    names: Sequence[str],
    batch_sizes: Sequence[int],
    prices: dict[str, float] | None = None,
) -> list[Candidate]:
    """Every (type, threads, batch size) to measure, in the order given."""
    found = []
    for name in names:
        instance_type = catalog[name]
        cpus = cpus_of(instance_type)
        price = (prices or {}).get(name, instance_type.price_per_hour)
        for threads in thread_choices(cpus):
            for batch in batch_sizes:
                found.append(Candidate(name, cpus, memory_of(instance_type), threads, batch, price))
    return found


def next_concurrency(steps: Sequence[Step], p99_target_ms: float) -> int | None:
    """The next load level, or None when the curve is complete."""
    if not steps:
        return FIRST_CONCURRENCY
    last = steps[-1]
    if last.p99_ms > p99_target_ms or last.error_rate > MAX_ERROR_RATE:
        return None
    if len(steps) > 1 and last.rps < steps[-2].rps * (1 + MIN_GAIN):
        return None  # doubling the callers no longer buys throughput
    following = last.concurrency * 2
    return following if following <= MAX_CONCURRENCY else None


@dataclass(frozen=True)
class Load:
    """One load level to run: users at its start, users added per minute, and for how long."""

    users: int
    seconds: float
    users_per_minute: float = 0.0

    @property
    def final_users(self) -> int:
        return self.users + math.floor(self.users_per_minute * self.seconds / 60)


def stepped(steps: Sequence[Step], p99_target_ms: float, seconds: float) -> Load | None:
    """The Default job's next level: next_concurrency's, held for `seconds`."""
    users = next_concurrency(steps, p99_target_ms)
    return None if users is None else Load(users, seconds)


# ---------------------------------------------------------------- Advanced job

PERCENTILES = {"P50": "p50_ms", "P95": "p95_ms", "P99": "p99_ms"}


class PatternError(ValueError):
    """A traffic pattern file that cannot be run; the message names the field."""


@dataclass(frozen=True)
class TrafficPattern:
    """SageMaker's Advanced job: phases of users (InitialNumberOfUsers, SpawnRate per minute,
    DurationInSeconds), and stopping conditions (MaxInvocations, ModelLatencyThresholds)."""

    phases: tuple[Load, ...]
    max_invocations: int | None = None
    thresholds_ms: tuple[tuple[str, float], ...] = ()  # (P50 | P95 | P99, ms)


def parse_traffic_pattern(doc: object) -> TrafficPattern:
    if not isinstance(doc, dict):
        raise PatternError("the traffic pattern must be a mapping with phases")
    phases = doc.get("phases")
    if not isinstance(phases, list) or not phases:
        raise PatternError("phases: give one or more {initialNumberOfUsers, spawnRate, durationInSeconds}")
    loads = []
    for i, phase in enumerate(phases):
        where = f"phases[{i}]"
        if not isinstance(phase, dict):
            raise PatternError(f"{where}: must be a mapping")
        try:
            users = int(phase["initialNumberOfUsers"])
            rate = float(phase.get("spawnRate", 0))
            seconds = float(phase["durationInSeconds"])
        except KeyError as exc:
            raise PatternError(f"{where}.{exc.args[0]}: required") from None
        except (TypeError, ValueError):
            raise PatternError(
                f"{where}: initialNumberOfUsers, spawnRate and durationInSeconds are numbers"
            ) from None
        if users < 1 or rate < 0 or seconds <= 0 or users + rate * seconds / 60 > MAX_CONCURRENCY:
            raise PatternError(
                f"{where}: needs initialNumberOfUsers >= 1, spawnRate >= 0, durationInSeconds > 0 and at most "
                f"{MAX_CONCURRENCY} users"
            )
        loads.append(Load(users, seconds, rate))
    stopping = doc.get("stoppingConditions") or {}
    if not isinstance(stopping, dict):
        raise PatternError("stoppingConditions: must be a mapping")
    max_invocations = stopping.get("maxInvocations")
    if max_invocations is not None and (not isinstance(max_invocations, int) or max_invocations < 1):
        raise PatternError("stoppingConditions.maxInvocations: a whole number of at least 1")
    thresholds = []
    for i, item in enumerate(stopping.get("modelLatencyThresholds") or []):
        where = f"stoppingConditions.modelLatencyThresholds[{i}]"
        percentile = str((item or {}).get("percentile", ""))
        if percentile not in PERCENTILES:
            raise PatternError(f"{where}.percentile: one of {', '.join(PERCENTILES)}")
        try:
            thresholds.append((percentile, float(item["valueInMilliseconds"])))
        except (KeyError, TypeError, ValueError):
            raise PatternError(f"{where}.valueInMilliseconds: a number of milliseconds") from None
    return TrafficPattern(tuple(loads), max_invocations, tuple(thresholds))


def next_phase(steps: Sequence[Step], pattern: TrafficPattern) -> Load | None:
    """The next phase, or None when the phases are done or a stopping condition was met."""
    if len(steps) >= len(pattern.phases):
        return None
    if steps:
        last = steps[-1]
        if any(getattr(last, PERCENTILES[p]) > ms for p, ms in pattern.thresholds_ms):
            return None
        if pattern.max_invocations is not None and sum(s.requests for s in steps) >= pattern.max_invocations:
            return None
    return pattern.phases[len(steps)]


def recommend(outcomes: Sequence[Outcome]) -> Outcome | None:
    """The cheapest candidate that meets the target: by cost per hour for the wanted rate when
    every candidate has a price, else by replicas; then lower p99, then fewer threads."""
    fit = [o for o in outcomes if o.meets_target]
    if not fit:
        return None
    priced = all(o.cost_per_hour is not None for o in fit)

    def key(o: Outcome) -> tuple[float, float, int]:
        best = o.best
        assert best is not None and o.replicas is not None
        first = o.cost_per_hour if priced and o.cost_per_hour is not None else float(o.replicas)
        return (first, best.p99_ms, o.candidate.intra_op_threads)

    return min(fit, key=key)
