"""The server master key (a 0600 file or a setting) and the per-user data keys it wraps.

Each user's data key is 32 random bytes, stored at `keys/<user_id>` wrapped
with AES-256-GCM under the master key (the AAD binds it to the user id, so a
wrapped key cannot be moved to another user). Deleting that object destroys
the user's data for good: this is how a user is erased.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import secrets
import stat
import threading
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from bkup.errors import ConfigError, Conflict, IntegrityError
from bkup.storage.objects import ObjectNotFound, ObjectStore

KEY_SIZE = 32
NONCE_SIZE = 12
KEYS_PREFIX = "keys"
_FORMAT_VERSION = 1


def master_key_from_text(b64: str) -> bytes:
    """Decode a master key given as base64 text (the BKUP_MASTER_KEY setting)."""
    try:
        key = base64.b64decode(b64.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError("the master key is not valid base64 (expected base64 of 32 bytes)") from None
    if len(key) != KEY_SIZE:
        raise ConfigError(f"the master key must be {KEY_SIZE} bytes, got {len(key)} (base64 of 32 random bytes)")
    return key


def load_or_create_master_key(path: Path) -> tuple[bytes, bool]:
    """Read the master key file, creating it (mode 0600) if missing. Returns (key, created)."""
    path = Path(path)
    try:
        return _read_master_key(path), False
    except FileNotFoundError:
        pass
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create the folder for the master key {path.parent}: {e}") from e
    key = secrets.token_bytes(KEY_SIZE)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process created it first: use theirs
        return _read_master_key(path), False
    except OSError as e:
        raise ConfigError(f"cannot create the master key file {path}: {e}") from e
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(base64.b64encode(key) + b"\n")
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return key, True


def _read_master_key(path: Path) -> bytes:
    """Raise FileNotFoundError if missing, ConfigError if unsafe or malformed."""
    try:
        st = path.stat()
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(
                f"the master key file {path} is accessible by other users "
                f"(mode {stat.S_IMODE(st.st_mode):04o}): run `chmod 600 {path}`"
            )
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read the master key file {path}: {e}") from e
    try:
        return master_key_from_text(text)
    except ConfigError as e:
        raise ConfigError(f"the master key file {path} is malformed: {e}") from None


def _aad(user_id: int) -> bytes:
    return b"bkup-user-key:%d" % user_id


def _key_path(user_id: int) -> str:
    if isinstance(user_id, bool) or not isinstance(user_id, int) or user_id < 0:
        raise ValueError(f"invalid user id {user_id!r}")
    return f"{KEYS_PREFIX}/{user_id}"


class KeyStore:
    """Per-user data keys in an object store, wrapped by the master key. Thread-safe."""

    def __init__(self, store: ObjectStore, master_key: bytes) -> None:
        if len(master_key) != KEY_SIZE:
            raise ConfigError(f"the master key must be {KEY_SIZE} bytes")
        self._store = store
        self._aead = AESGCM(master_key)
        self._cache: dict[int, bytes] = {}
        self._lock = threading.Lock()

    def create_user_key(self, user_id: int, name: str) -> bytes:
        """Create, store and return a new data key; refuses to replace an existing one."""
        path = _key_path(user_id)
        key = secrets.token_bytes(KEY_SIZE)
        nonce = secrets.token_bytes(NONCE_SIZE)
        record = {
            "version": _FORMAT_VERSION,
            "user_id": user_id,
            "name": name,
            "wrapped": base64.b64encode(nonce + self._aead.encrypt(nonce, key, _aad(user_id))).decode(),
        }
        with self._lock:
            # User ids come from the catalog and are never reused; the check
            # guards against pointing a fresh catalog at an old store.
            if user_id in self._cache or self._store.exists(path):
                raise Conflict(f"user {user_id} already has a data key in {self._store.url} ({path})")
            self._store.put(path, json.dumps(record, sort_keys=True).encode() + b"\n")
            self._cache[user_id] = key
        return key

    def user_key(self, user_id: int) -> bytes:
        """The user's data key (cached: keys never change)."""
        with self._lock:
            cached = self._cache.get(user_id)
        if cached is not None:
            return cached
        record = self._read(user_id)
        try:
            blob = base64.b64decode(record["wrapped"], validate=True)
        except (KeyError, TypeError, binascii.Error, ValueError):
            raise IntegrityError(f"the data key object {_key_path(user_id)} is damaged") from None
        try:
            key = self._aead.decrypt(blob[:NONCE_SIZE], blob[NONCE_SIZE:], _aad(user_id))
        except InvalidTag:
            raise ConfigError(
                f"master key does not match the storage: cannot unwrap the data key of user {user_id} "
                f"in {self._store.url} (wrong master key, or a key object moved between users)"
            ) from None
        with self._lock:
            return self._cache.setdefault(user_id, key)

    def delete_user_key(self, user_id: int) -> None:
        """Destroy the user's data key: every pack of that user becomes unreadable."""
        path = _key_path(user_id)
        with self._lock:
            self._cache.pop(user_id, None)
            self._store.delete(path)

    def list_users(self) -> list[tuple[int, str]]:
        """(user_id, name) of every key in the store, by user id."""
        users = []
        for key in self._store.list(KEYS_PREFIX):
            name = key.removeprefix(KEYS_PREFIX + "/")
            if not name.isdigit():
                continue  # not ours: the layout holds only keys/<int>
            try:
                record = self._read(int(name))
            except ObjectNotFound:
                continue  # deleted while we listed
            users.append((int(name), str(record.get("name", ""))))
        return sorted(users)

    def _read(self, user_id: int) -> dict:
        path = _key_path(user_id)
        try:
            raw = self._store.get(path)
        except ObjectNotFound:
            raise ObjectNotFound(f"user {user_id} has no data key in {self._store.url} ({path})") from None
        try:
            record = json.loads(raw)
        except ValueError:
            raise IntegrityError(f"the data key object {path} is not valid JSON") from None
        if not isinstance(record, dict) or record.get("version") != _FORMAT_VERSION:
            raise IntegrityError(f"the data key object {path} has an unknown format")
        if record.get("user_id") != user_id:
            raise IntegrityError(f"the data key object {path} belongs to user {record.get('user_id')!r}")
        return record


def rewrap_master(store: ObjectStore, old_master: bytes, new_master: bytes) -> int:
    """Rewrap every user's data key under `new_master` (master key rotation, servers stopped); returns the count.

    Every key is unwrapped first, so a wrong `old_master` changes nothing. The
    packs are untouched: only the 60-byte wrapped keys in `keys/` change.
    """
    old = KeyStore(store, old_master)
    users = old.list_users()
    keys = [(user_id, name, old.user_key(user_id)) for user_id, name in users]
    new = AESGCM(new_master)
    for user_id, name, key in keys:
        nonce = secrets.token_bytes(NONCE_SIZE)
        record = {
            "version": _FORMAT_VERSION,
            "user_id": user_id,
            "name": name,
            "wrapped": base64.b64encode(nonce + new.encrypt(nonce, key, _aad(user_id))).decode(),
        }
        store.put(_key_path(user_id), json.dumps(record, sort_keys=True).encode() + b"\n")
    return len(keys)
