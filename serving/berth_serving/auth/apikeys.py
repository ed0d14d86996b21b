"""API keys from a mounted Secret: one file per entry, the file name the key's name.

An entry holds `sha256:<64 hex digits>` (the key stored hashed: what a Secret should hold, so
that reading the Secret does not give the key away) or the key itself (hashed here when read,
never logged). Several entries are several valid keys: add the new one, move the clients, remove
the old one. A Secret volume shows its entries as symlinks into a `..data` directory that the
kubelet swaps atomically on update; dotfiles are that machinery and are skipped.

The directory is read again every KEYS_CHECK_SECONDS in a thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("berth.serving.auth")

HASH_PREFIX = b"sha256:"
# How often the directory is read for changes (a Secret update reaches the volume within the
# kubelet's sync period, about a minute: a few seconds more do not matter).
KEYS_CHECK_SECONDS = 2.0
# A plain key shorter than this is accepted with a warning: it could be guessed.
SHORT_KEY_CHARACTERS = 16
_HEX64 = re.compile(rb"[0-9a-fA-F]{64}")
_VISIBLE_ASCII = bytes(range(0x21, 0x7F))


_sha256 = hashlib.sha256


def key_digest(key: bytes) -> bytes:
    return _sha256(key).digest()


def hashed_entry(key: str) -> str:
    """What to store in the Secret for `key`: `sha256:` and the hex digest of its bytes."""
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class ApiKey:
    name: str
    digest: bytes  # sha256 of the key


class KeySet:
    """The keys of one reading of the directory."""

    def __init__(
        self, keys: Sequence[ApiKey] = (), compare: Callable[[bytes, bytes], bool] = hmac.compare_digest
    ) -> None:
        self.keys = tuple(keys)
        self._pairs = tuple((key.name, key.digest) for key in self.keys)
        self._compare = compare

    @property
    def names(self) -> list[str]:
        return [key.name for key in self.keys]

    def match(self, key: bytes) -> str | None:
        """The name of the entry `key` is, or None.

        The key is hashed and the digest compared with every entry's in constant time, all of
        them each time: how long it takes says nothing about the key's bytes, nor about which
        entry (if any) it matched."""
        digest = _sha256(key).digest()
        compare = self._compare
        found: str | None = None
        for name, stored in self._pairs:
            if compare(digest, stored) and found is None:
                found = name
        return found

    def same_as(self, other: KeySet) -> bool:
        return self.keys == other.keys


def read_keys(directory: Path) -> tuple[list[ApiKey], list[str]]:
    """The usable entries of `directory`, and one line per entry skipped (never its content).
    OSError when the directory itself cannot be listed."""
    keys: list[ApiKey] = []
    problems: list[str] = []
    for path in sorted(directory.iterdir(), key=lambda p: p.name):
        name = path.name
        if name.startswith("."):
            continue  # ..data, ..2026_12_02_..., editors' dotfiles
        try:
            if not path.is_file():
                continue
            content = path.read_bytes().strip()
        except OSError as error:
            problems.append(f"entry {name}: cannot be read ({error.strerror}); skipped")
            continue
        if content.startswith(HASH_PREFIX):
            hex_digest = content[len(HASH_PREFIX) :]
            if not _HEX64.fullmatch(hex_digest):
                problems.append(f"entry {name}: 'sha256:' must be followed by 64 hex digits; skipped")
                continue
            keys.append(ApiKey(name, bytes.fromhex(hex_digest.decode())))
        elif not content:
            problems.append(f"entry {name}: empty; skipped")
        elif content.translate(None, _VISIBLE_ASCII):
            problems.append(f"entry {name}: a key must be printable ASCII with no spaces; skipped")
        else:
            if len(content) < SHORT_KEY_CHARACTERS:
                problems.append(f"entry {name}: a key of fewer than {SHORT_KEY_CHARACTERS} characters")
            keys.append(ApiKey(name, key_digest(content)))
    return keys, problems


class KeyStore:
    """The endpoint's keys, kept in step with the directory."""

    def __init__(
        self,
        directory: Path | str,
        check_seconds: float = KEYS_CHECK_SECONDS,
        compare: Callable[[bytes, bytes], bool] = hmac.compare_digest,
    ) -> None:
        self.directory = Path(directory)
        self.check_seconds = check_seconds
        self.keys = KeySet(compare=compare)
        self._compare = compare
        self._task: asyncio.Task[None] | None = None
        self._last_problems: list[str] = []
        self._unreadable: str | None = None

    def load(self) -> None:
        """The first reading, at start: a directory that is not there is an error."""
        if not self.directory.is_dir():
            raise FileNotFoundError(f"--api-keys-dir {self.directory} is not a directory")
        self.refresh()
        if not self.keys.keys:
            log.warning(
                "no usable API keys: every invoke request is refused with 401",
                extra={"fields": {"directory": str(self.directory)}},
            )

    def refresh(self) -> bool:
        """Read the directory again; True when the keys changed. A directory that cannot be read
        keeps the keys it had (a Secret update in progress, a transient error)."""
        try:
            keys, problems = read_keys(self.directory)
        except OSError as error:
            reason = f"{type(error).__name__}: {error.strerror or error}"
            if reason != self._unreadable:
                log.warning(
                    "cannot read the API keys directory; keeping the keys read before",
                    extra={"fields": {"directory": str(self.directory), "error": reason}},
                )
            self._unreadable = reason
            return False
        self._unreadable = None
        if problems != self._last_problems:
            for problem in problems:
                log.warning("API key entry: " + problem, extra={"fields": {"directory": str(self.directory)}})
            self._last_problems = problems
        fresh = KeySet(keys, self._compare)
        if fresh.same_as(self.keys):
            return False
        self.keys = fresh  # one assignment: a request sees the old set or the new one
        log.info(
            "API keys read",
            extra={"fields": {"directory": str(self.directory), "keys": fresh.names}},
        )
        return True

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._watch())

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.check_seconds)
            try:
                await asyncio.to_thread(self.refresh)
            except Exception:  # a bug: keep the keys and keep watching
                log.exception("reading the API keys failed")
