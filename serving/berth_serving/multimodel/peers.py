"""Model affinity on a cluster: the replicas of a variant send each model's requests to the
one replica that holds it, so the fleet loads each model once, not once per replica.

The Service in front spreads requests over the replicas at random. The replica a request
reaches ranks the ready replicas for its model (rendezvous.py, the same ranking local mode's
router uses) and forwards it to the owner, marked so the owner serves it itself: one hop at
most. A hot model spills to its second choice when the owner is saturated (this replica's
requests in flight to it reach a limit, or it answered 503). A peer that cannot be reached is
skipped and the request served here, so a replica going away costs no request.

The ready replicas come from the variant's headless Service (`dns:NAME:PORT`, resolved again
every REFRESH_SECONDS: it lists ready pods only) or a fixed `HOST:PORT,...` list.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Sequence
from dataclasses import dataclass

from berth_serving.asyncinf.replica_client import (
    Answer,
    ReplicaClient,
    ReplicaProtocolError,
    ReplicaUnreachable,
)
from berth_serving.multimodel.rendezvous import SPILL_CHOICES, rank

log = logging.getLogger("berth.serving.multimodel.peers")

FORWARDED_HEADER = "X-Berth-Forwarded-By"
REFRESH_SECONDS = 5.0
# Connections kept open to each peer.
PEER_CONNECTIONS = 32
# Headers a forwarded request carries on (what the owner's answer depends on).
FORWARDED_REQUEST_HEADERS = frozenset(
    {
        b"content-type",
        b"accept",
        b"authorization",
        b"x-berth-api-key",  # the owner checks invoke auth again: it trusts no header
        b"x-berth-inference-id",
        b"x-berth-output",
        b"x-berth-target-model",
        b"x-amzn-sagemaker-target-model",
        b"x-berth-target-variant",
        b"inference-header-content-length",
    }
)
# Headers of the owner's answer relayed to the client.
RELAYED_ANSWER_HEADERS = (
    "content-type",
    "retry-after",
    "x-berth-inference-id",
    "x-berth-model-cache",
    "inference-header-content-length",
)


@dataclass(frozen=True)
class PeerSpec:
    dns_name: str | None
    port: int
    fixed: tuple[str, ...]


def parse_peers(text: str) -> PeerSpec:
    """`dns:NAME:PORT` or `HOST:PORT,HOST:PORT`; ValueError naming the expected shape."""
    text = text.strip()
    if text.startswith("dns:"):
        name, _, port = text[len("dns:") :].rpartition(":")
        if not name or not port.isdigit():
            raise ValueError(f"--peers {text!r}: expected dns:NAME:PORT")
        return PeerSpec(name, int(port), ())
    members = tuple(part.strip() for part in text.split(",") if part.strip())
    for member in members:
        host, _, port = member.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"--peers member {member!r}: expected HOST:PORT")
    return PeerSpec(None, 0, members)


class Peers:
    def __init__(self, spec: PeerSpec, me: str, saturated_inflight: int) -> None:
        self.spec = spec
        self.me = me  # this replica's HOST:PORT, as the others see it
        self.saturated_inflight = saturated_inflight
        self._members: tuple[str, ...] = spec.fixed
        self._clients: dict[str, ReplicaClient] = {}
        self._inflight: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None
        self.forwarded = 0  # requests this replica passed to their owner
        self.fell_back = 0  # requests served here because their owner could not be reached

    async def start(self) -> None:
        if self.spec.dns_name is not None:
            await self._resolve()
            self._task = asyncio.create_task(self._refresh())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for client in self._clients.values():
            await client.close()

    @property
    def members(self) -> tuple[str, ...]:
        return self._members

    def candidates(self, key: str, busy_here: bool) -> list[str]:
        """Where to send a request for `key`, best first: its owner, then (when the owner is
        saturated) its second choice; this replica's own address means 'serve it here'."""
        ranked = rank(key, {*self._members, self.me})[:SPILL_CHOICES]
        free = [peer for peer in ranked if not self._saturated(peer, busy_here)]
        return free or ranked[:1]

    def _saturated(self, peer: str, busy_here: bool) -> bool:
        if peer == self.me:
            return busy_here
        return self._inflight.get(peer, 0) >= self.saturated_inflight

    async def forward(
        self, peer: str, path: str, headers: Sequence[tuple[bytes, bytes]], body: bytes
    ) -> Answer | None:
        """The owner's answer, or None when it cannot be reached (the caller serves it)."""
        client = self._clients.get(peer)
        if client is None:
            client = self._clients[peer] = ReplicaClient(f"http://{peer}/invocations", PEER_CONNECTIONS)
        carried = {
            key.decode("latin-1"): value.decode("latin-1")
            for key, value in headers
            if key in FORWARDED_REQUEST_HEADERS
        }
        carried[FORWARDED_HEADER] = self.me
        self._inflight[peer] = self._inflight.get(peer, 0) + 1
        try:
            answer = await client.post(carried, body, len(body), path=path)
        except (ReplicaUnreachable, ReplicaProtocolError, OSError) as error:
            self.fell_back += 1
            log.info("peer unreachable; serving here", extra={"fields": {"peer": peer, "error": str(error)}})
            return None
        finally:
            self._inflight[peer] -= 1
        self.forwarded += 1
        return answer

    async def _refresh(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_SECONDS)
            try:
                await self._resolve()
            except Exception:  # a refresh must never end the task; the last members stay
                log.exception("resolving peers failed")

    async def _resolve(self) -> None:
        assert self.spec.dns_name is not None
        loop = asyncio.get_running_loop()
        try:
            found = await loop.getaddrinfo(self.spec.dns_name, self.spec.port, type=socket.SOCK_STREAM)
        except socket.gaierror as error:
            # No ready pod yet (a headless Service with no endpoints has no records): alone.
            log.debug(
                "no peers resolved", extra={"fields": {"name": self.spec.dns_name, "error": str(error)}}
            )
            self._members = ()
            return
        members = sorted({_member(str(info[4][0]), self.spec.port) for info in found})
        if tuple(members) != self._members:
            log.info("peers changed", extra={"fields": {"peers": members}})
        self._members = tuple(members)


def _member(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
