"""The recommender's decisions, without any load: candidates, when to stop, what to recommend."""

from __future__ import annotations

import re

import pytest
from berth_operator.recommend.search import (
    MAX_CONCURRENCY,
    Candidate,
    Load,
    Outcome,
    PatternError,
    Step,
    candidates,
    cpus_of,
    next_concurrency,
    next_phase,
    parse_traffic_pattern,
    recommend,
    thread_choices,
)
from berth_operator.settings import Settings


def step(concurrency: int, rps: float, p99: float, failures: int = 0) -> Step:
    return Step(concurrency, int(rps * 10) + failures, failures, 10.0, p99 / 3, p99 / 2, p99)


def outcome(candidate: Candidate, *steps: Step, target: float = 50.0, rps: float = 1000.0) -> Outcome:
    return Outcome(candidate, tuple(steps), target, rps, candidate.cpus)


SMALL = Candidate("cpu-small", 1, 2 << 30, 1, 32, price_per_hour=0.10)
LARGE = Candidate("cpu-large", 4, 8 << 30, 4, 32, price_per_hour=0.45)


def test_threads_up_to_the_types_cores() -> None:
    assert thread_choices(1) == [1]
    assert thread_choices(4) == [1, 2, 4]
    assert thread_choices(6) == [1, 2, 4, 6]


def test_candidates_come_from_the_catalog_with_prices() -> None:
    settings = Settings.model_validate(
        {
            "instanceTypes": {
                "half": {"resources": {"limits": {"cpu": "500m", "memory": "1Gi"}}, "pricePerHour": 0.02},
                "quad": {"resources": {"requests": {"cpu": 4}}},
            }
        }
    )
    found = candidates(settings.instance_types, ["half", "quad"], [1, 16])
    assert [(c.instance_type, c.intra_op_threads, c.max_batch_size) for c in found] == [
        ("half", 1, 1),
        ("half", 1, 16),
        ("quad", 1, 1),
        ("quad", 1, 16),
        ("quad", 2, 1),
        ("quad", 2, 16),
        ("quad", 4, 1),
        ("quad", 4, 16),
    ]
    assert found[0].memory_bytes == 1 << 30 and found[0].price_per_hour == 0.02
    assert found[2].memory_bytes is None and found[2].price_per_hour is None
    assert cpus_of(settings.instance_types["half"]) == 1  # at least one core


def test_the_load_doubles_until_the_target_breaks_or_throughput_stops() -> None:
    assert next_concurrency([], 50) == 1
    assert next_concurrency([step(1, 100, 5)], 50) == 2
    assert next_concurrency([step(1, 100, 5), step(2, 190, 8)], 50) == 4
    assert next_concurrency([step(1, 100, 5), step(2, 190, 60)], 50) is None  # p99 over target
    assert next_concurrency([step(1, 100, 5), step(2, 102, 8)], 50) is None  # saturated
    assert next_concurrency([step(1, 100, 5), step(2, 190, 8, failures=100)], 50) is None  # errors
    assert next_concurrency([step(MAX_CONCURRENCY, 100, 5)], 50) is None


def test_the_capacity_is_the_best_step_within_the_target() -> None:
    result = outcome(SMALL, step(1, 100, 5), step(2, 190, 20), step(4, 300, 70))
    best = result.best
    assert best is not None and best.concurrency == 2
    assert result.replicas == 6  # ceil(1000 / 190)
    assert result.cost_per_hour == pytest.approx(0.6)
    assert result.cost_per_million == pytest.approx(0.10 / (190 * 3600) * 1e6)


def test_the_cheapest_candidate_that_meets_the_target_is_recommended() -> None:
    small = outcome(SMALL, step(1, 100, 5), step(2, 190, 20))  # 6 replicas, 0.60/h
    large = outcome(LARGE, step(1, 300, 5), step(2, 600, 10), step(4, 1100, 30))  # 1 replica, 0.45/h
    assert recommend([small, large]) is large
    cheap_large = outcome(Candidate("cpu-large", 4, None, 4, 32, price_per_hour=0.70), *large.steps)
    assert recommend([small, cheap_large]) is small


def test_without_prices_fewer_replicas_win() -> None:
    a = outcome(Candidate("a", 1, None, 1, 1), step(1, 100, 5))
    b = outcome(Candidate("b", 2, None, 2, 1), step(1, 400, 5))
    assert recommend([a, b]) is b


def test_nothing_is_recommended_when_no_candidate_meets_the_target() -> None:
    slow = outcome(SMALL, step(1, 100, 80), target=50)
    assert slow.best is None and slow.replicas is None
    assert recommend([slow]) is None


def test_a_candidate_over_its_memory_limit_is_not_recommended() -> None:
    heavy = Outcome(SMALL, (step(1, 100, 5),), 50, 100, 1, peak_rss_bytes=3 << 30)
    assert not heavy.fits_memory
    assert recommend([heavy]) is None


# --------------------------------------------------------------------------- Advanced job

PATTERN = {
    "phases": [
        {"initialNumberOfUsers": 1, "spawnRate": 0, "durationInSeconds": 10},
        {"initialNumberOfUsers": 4, "spawnRate": 60, "durationInSeconds": 30},
        {"initialNumberOfUsers": 16, "durationInSeconds": 10},
    ],
    "stoppingConditions": {
        "maxInvocations": 5000,
        "modelLatencyThresholds": [{"percentile": "P95", "valueInMilliseconds": 40}],
    },
}


def test_a_traffic_pattern_runs_its_phases_until_a_stopping_condition() -> None:
    pattern = parse_traffic_pattern(PATTERN)
    assert pattern.phases[1] == Load(4, 30, 60) and pattern.phases[1].final_users == 34
    assert next_phase([], pattern) == pattern.phases[0]
    assert next_phase([step(1, 100, 10)], pattern) == pattern.phases[1]
    # p95 of the last phase (p99 / 2 here) over 40 ms: stop.
    assert next_phase([step(1, 100, 10), step(34, 300, 90)], pattern) is None
    # 5,000 invocations reached: stop.
    assert next_phase([step(1, 100, 10), step(34, 480, 20)], pattern) is None
    assert next_phase([step(1, 10, 10), step(34, 20, 20), step(16, 20, 20)], pattern) is None  # all done


@pytest.mark.parametrize(
    ("doc", "words"),
    [
        ({}, "phases: give one or more"),
        ({"phases": [{"spawnRate": 1, "durationInSeconds": 5}]}, "phases[0].initialNumberOfUsers: required"),
        (
            {"phases": [{"initialNumberOfUsers": 0, "durationInSeconds": 5}]},
            "phases[0]: needs initialNumberOfUsers >= 1",
        ),
        ({"phases": [{"initialNumberOfUsers": "many", "durationInSeconds": 5}]}, "are numbers"),
        (
            {
                "phases": [{"initialNumberOfUsers": 1, "durationInSeconds": 5}],
                "stoppingConditions": {"maxInvocations": 0},
            },
            "stoppingConditions.maxInvocations",
        ),
        (
            {
                "phases": [{"initialNumberOfUsers": 1, "durationInSeconds": 5}],
                "stoppingConditions": {
                    "modelLatencyThresholds": [{"percentile": "P42", "valueInMilliseconds": 1}]
                },
            },
            "modelLatencyThresholds[0].percentile: one of P50, P95, P99",
        ),
    ],
)
def test_a_bad_traffic_pattern_names_the_field(doc: object, words: str) -> None:
    with pytest.raises(PatternError, match=re.escape(words)):
        parse_traffic_pattern(doc)
