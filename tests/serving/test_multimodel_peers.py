"""Model affinity between replicas, as on a cluster: three real `berth serve --multi-model`
processes that know each other (--peers) pass each model's requests to its owner, so each
model is loaded by exactly one replica whichever replica a request reaches."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from berth_serving.multimodel.peers import Peers, PeerSpec, parse_peers
from berth_serving.multimodel.rendezvous import rank

from tests.serving import models
from tests.serving.support import free_port, request, serve_subprocess, wait_until

MODELS = 30
ROW = json.dumps([[1.0, 2.0, 3.0, 4.0]]).encode()


@pytest.fixture(scope="module")
def prefix(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("peers-prefix")
    for i in range(MODELS):
        models.build_offset(root / f"t{i:02d}.onnx", float(i))
    return root


@contextlib.contextmanager
def peered(prefix: Path, count: int, *extra: str) -> Iterator[list[tuple[str, subprocess.Popen[bytes]]]]:
    """`count` real multi-model replicas on loopback, each told of all of them (--peers)."""
    ports = [free_port() for _ in range(count)]
    members = ",".join(f"127.0.0.1:{port}" for port in ports)
    started = [
        (
            f"127.0.0.1:{port}",
            serve_subprocess(
                prefix,
                port,
                "--multi-model",
                "--peers",
                members,
                "--pod-ip",
                "127.0.0.1",
                "--log-level",
                "warning",
                *extra,
            ),
        )
        for port in ports
    ]
    try:
        for address, _ in started:
            wait_until(
                lambda address=address: request(f"http://{address}/ping").status in (200, 401), timeout=60
            )
        yield started
    finally:
        for _, process in started:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for _, process in started:
            process.wait(30)


@pytest.fixture
def replicas(prefix: Path) -> Iterator[list[tuple[str, subprocess.Popen[bytes]]]]:
    with peered(prefix, 3) as started:
        yield started


def invoke(address: str, name: str, **headers: str) -> tuple[int, str]:
    answer = request(
        f"http://{address}/invocations",
        "POST",
        ROW,
        {"Content-Type": "application/json", "X-Berth-Target-Model": name, **headers},
    )
    return answer.status, answer.body.decode()


def loaded_on(address: str) -> set[str]:
    return {model["key"] for model in json.loads(request(f"http://{address}/models").body)["models"]}


def answered_200(address: str) -> float:
    text = request(f"http://{address}/metrics").body.decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("berth_invocations_total{") and 'code="200"' in line
    )


def test_each_model_is_loaded_by_its_owner_only(replicas: list[tuple[str, subprocess.Popen[bytes]]]) -> None:
    addresses = [address for address, _ in replicas]
    sent = 0
    for i in range(MODELS):
        for entry in addresses:  # every replica gets a request for every model
            status, body = invoke(entry, f"t{i:02d}.onnx")
            assert status == 200, body
            assert json.loads(body)["predictions"][0][0] == pytest.approx(1.0 + i)
            sent += 1
    holders = {address: loaded_on(address) for address in addresses}
    for i in range(MODELS):
        key = f"t{i:02d}"
        owner = rank(key, addresses)[0]
        assert [a for a in addresses if key in holders[a]] == [owner], key
    # Every request is counted once, by the replica that ran it, not by the one it passed through.
    assert sum(answered_200(address) for address in addresses) == sent
    assert all(holders.values()), "rendezvous hashing left a replica with no model"


def test_a_replica_that_goes_away_costs_no_request(
    replicas: list[tuple[str, subprocess.Popen[bytes]]],
) -> None:
    addresses = [address for address, _ in replicas]
    for i in range(MODELS):
        assert invoke(addresses[0], f"t{i:02d}.onnx")[0] == 200
    before = {address: loaded_on(address) for address in addresses[:2]}
    gone, process = replicas[2]
    process.send_signal(signal.SIGKILL)
    process.wait(10)
    for i in range(MODELS):
        status, body = invoke(addresses[i % 2], f"t{i:02d}.onnx")
        assert status == 200, body
    # The survivors keep their own models; only the dead one's move (served where they land).
    for address in addresses[:2]:
        assert before[address] <= loaded_on(address)
        moved = loaded_on(address) - before[address]
        assert all(rank(key, addresses)[0] == gone for key in moved), moved


def test_a_passed_on_request_keeps_its_api_key(prefix: Path, tmp_path: Path) -> None:
    """The owner checks invoke auth again (it trusts no header): the key travels with the request."""
    from berth_serving.auth.apikeys import hashed_entry

    from tests.serving.test_auth_keys import secret_volume

    key = "peers-key-0123456789abcdef"
    keys = secret_volume(tmp_path / "keys", {"ci": hashed_entry(key)})
    with peered(prefix, 2, "--auth-mode", "APIKey", "--api-keys-dir", str(keys)) as started:
        addresses = [address for address, _ in started]
        # A model the second replica owns, asked of the first: it must pass the key on.
        name = next(f"t{i:02d}" for i in range(MODELS) if rank(f"t{i:02d}", addresses)[0] == addresses[1])
        status, body = invoke(addresses[0], name + ".onnx", **{"X-Berth-Api-Key": key})
        assert status == 200, body
        assert invoke(addresses[0], name + ".onnx")[0] == 401  # no key: refused where it landed


def test_a_saturated_owner_spills_to_the_second_choice() -> None:
    a, b, me = "10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.3:8080"
    peers = Peers(PeerSpec(None, 0, (a, b)), me, saturated_inflight=2)
    key = next(f"k{i}" for i in range(1000) if rank(f"k{i}", [a, b, me])[:2] == [a, b])
    assert peers.candidates(key, busy_here=False) == [a, b]
    peers._inflight[a] = 2  # two requests in flight to the owner: saturated
    assert peers.candidates(key, busy_here=False) == [b]
    peers._inflight[b] = 2  # both saturated: back to the owner, never a third replica
    assert peers.candidates(key, busy_here=False) == [a]
    mine = next(f"k{i}" for i in range(1000) if rank(f"k{i}", [a, b, me])[0] == me)
    second = rank(mine, [a, b, me])[1]
    peers._inflight = {}
    assert peers.candidates(mine, busy_here=True) == [second]  # this replica's own model, busy here


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("dns:svc", "dns:NAME:PORT"),
        ("dns::80", "dns:NAME:PORT"),
        ("a:1,b", "HOST:PORT"),
        ("host:x", "HOST:PORT"),
    ],
)
def test_peer_lists_that_cannot_work_are_refused(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_peers(text)


def test_serve_refuses_peers_without_its_own_address(prefix: Path) -> None:
    process = serve_subprocess(prefix, free_port(), "--multi-model", "--peers", "127.0.0.1:1")
    _, err = process.communicate(timeout=60)
    assert process.returncode == 2
    assert b"--peers needs --pod-ip" in err
