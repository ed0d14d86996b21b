"""Fixtures: a KMock API server per test and the real Berth operator (kopf) running against it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from berth_operator.settings import Settings

from tests.support.kmockk8s import KMockCluster, OperatorThread


@pytest.fixture()
def cluster() -> Iterator[KMockCluster]:
    cluster = KMockCluster()
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture()
def start_operator(cluster: KMockCluster) -> Iterator[Callable[..., OperatorThread]]:
    """Start the operator (at most a few per test); each is stopped at teardown."""
    started: list[OperatorThread] = []

    def start(settings: Settings | None = None, **kwargs: Any) -> OperatorThread:
        operator = OperatorThread(cluster, settings, **kwargs).start()
        started.append(operator)
        return operator

    yield start
    for operator in started:
        if not operator.stopping.is_set():
            operator.stop()
