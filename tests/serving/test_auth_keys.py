"""API keys from a directory laid out as a Kubernetes Secret volume: hashed and plain entries,
dotfiles and the `..data` machinery, rotation by changing the files on disk, and the
constant-time comparison (every entry compared, whichever matches)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from berth_serving.auth.apikeys import KeySet, KeyStore, hashed_entry, read_keys

ALICE = "alice-key-0123456789abcdef"
BOB = "bob-key-fedcba9876543210"


def secret_volume(root: Path, entries: dict[str, str], generation: int = 1) -> Path:
    """Write `entries` the way the kubelet does: a timestamped directory, `..data` pointing at
    it (swapped with a rename), and one symlink per entry through `..data`."""
    root.mkdir(exist_ok=True)
    data = root / f"..2026_12_02_00_00_0{generation}.000000000"
    data.mkdir()
    for name, content in entries.items():
        (data / name).write_text(content)
    link = root / "..data_tmp"
    link.symlink_to(data.name)
    link.rename(root / "..data")
    for name in entries:
        if not (root / name).is_symlink():
            (root / name).symlink_to(f"..data/{name}")
    for stale in root.iterdir():  # entries no longer in the Secret dangle: remove them, as the kubelet does
        if stale.is_symlink() and not stale.name.startswith("..") and stale.name not in entries:
            stale.unlink()
    return root


def test_hashed_and_plain_entries_in_a_secret_volume(tmp_path: Path) -> None:
    keys_dir = secret_volume(tmp_path / "keys", {"alice": hashed_entry(ALICE) + "\n", "bob": BOB})
    (keys_dir / ".hidden").write_text("not-a-key-0123456789")
    keys, problems = read_keys(keys_dir)
    assert problems == []
    assert [key.name for key in keys] == ["alice", "bob"]
    assert keys[0].digest == hashlib.sha256(ALICE.encode()).digest()
    assert keys[1].digest == hashlib.sha256(BOB.encode()).digest()
    key_set = KeySet(keys)
    assert key_set.match(ALICE.encode()) == "alice"
    assert key_set.match(BOB.encode()) == "bob"
    assert key_set.match(hashed_entry(ALICE).encode()) is None  # the stored hash is not a key
    assert key_set.match(b"not-a-key-0123456789") is None
    assert key_set.match(ALICE.encode()[:-1]) is None
    assert key_set.match(ALICE.encode() + b" ") is None  # bytes exactly: read_credentials strips the header
    assert key_set.match(b"\x01" + ALICE.encode()) is None


def test_unusable_entries_are_skipped_and_named_without_their_content(tmp_path: Path) -> None:
    keys_dir = tmp_path / "keys"
    keys_dir.mkdir()
    (keys_dir / "short-hash").write_text("sha256:abc123")
    (keys_dir / "empty").write_text("  \n")
    (keys_dir / "spaced").write_text("has a space in-it-0123456789")
    (keys_dir / "weak").write_text("hunter2")
    (keys_dir / "subdir").mkdir()
    keys, problems = read_keys(keys_dir)
    assert [key.name for key in keys] == ["weak"]  # accepted, with a warning
    assert len(problems) == 4
    assert any(
        p.startswith("entry short-hash: 'sha256:' must be followed by 64 hex digits") for p in problems
    )
    assert any(p.startswith("entry weak: a key of fewer than 16 characters") for p in problems)
    assert not any("hunter2" in p or "abc123" in p or "has a space" in p for p in problems)


def test_rotation_on_disk(tmp_path: Path) -> None:
    keys_dir = secret_volume(tmp_path / "keys", {"old": hashed_entry(ALICE)})
    store = KeyStore(keys_dir)
    store.load()
    assert store.keys.match(ALICE.encode()) == "old" and store.keys.match(BOB.encode()) is None
    assert store.refresh() is False  # nothing changed
    # Step 1: the new key beside the old one (a Secret update: a new ..data, swapped at once).
    secret_volume(keys_dir, {"old": hashed_entry(ALICE), "new": hashed_entry(BOB)}, generation=2)
    assert store.refresh() is True
    assert store.keys.match(ALICE.encode()) == "old" and store.keys.match(BOB.encode()) == "new"
    # Step 2: the old one removed.
    secret_volume(keys_dir, {"new": hashed_entry(BOB)}, generation=3)
    assert store.refresh() is True
    assert store.keys.names == ["new"] and store.keys.match(ALICE.encode()) is None


def test_a_plain_file_rewritten_in_place_is_picked_up(tmp_path: Path) -> None:
    keys_dir = tmp_path / "keys"
    keys_dir.mkdir()
    (keys_dir / "ci").write_text(ALICE)
    store = KeyStore(keys_dir)
    store.load()
    (keys_dir / "ci").write_text(BOB)
    assert store.refresh() is True
    assert store.keys.match(BOB.encode()) == "ci" and store.keys.match(ALICE.encode()) is None


def test_a_directory_that_goes_away_keeps_the_keys_read_before(tmp_path: Path) -> None:
    keys_dir = tmp_path / "keys"
    keys_dir.mkdir()
    (keys_dir / "ci").write_text(ALICE)
    store = KeyStore(keys_dir)
    store.load()
    os.rename(keys_dir, tmp_path / "elsewhere")
    assert store.refresh() is False
    assert store.keys.match(ALICE.encode()) == "ci"


def test_a_missing_directory_is_an_error_at_start(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        KeyStore(tmp_path / "nope").load()


@pytest.mark.parametrize("key", [ALICE, BOB, "no-such-key-0123456789"])
def test_every_entry_is_compared_whichever_matches(tmp_path: Path, key: str) -> None:
    """The comparison is hmac.compare_digest on sha256 digests, and it is made against every
    entry each time: neither the match's position nor a miss ends the loop early."""
    compared: list[tuple[bytes, bytes]] = []

    def counting_compare(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return a == b

    keys_dir = tmp_path / "keys"
    keys_dir.mkdir()
    for name, content in {"a": ALICE, "b": BOB, "c": "carol-key-0123456789abc"}.items():
        (keys_dir / name).write_text(content)
    store = KeyStore(keys_dir, compare=counting_compare)
    store.load()
    store.keys.match(key.encode())
    assert len(compared) == 3
    assert all(a == hashlib.sha256(key.encode()).digest() and len(b) == 32 for a, b in compared)


def test_hashed_entry_is_what_sha256sum_prints() -> None:
    # `printf %s KEY | sha256sum` in docs/auth.md
    assert hashed_entry("abc") == "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
