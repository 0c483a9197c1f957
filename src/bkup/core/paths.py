"""Client paths: the lossless wire form of file system bytes, and the strict checks restore relies on.

Wire form: the path's bytes decoded as UTF-8, with every byte that is not part
of valid UTF-8 written ``\\xNN`` (two lowercase hex digits) and every literal
backslash written ``\\\\``. Each byte string without NUL has exactly one wire
form, and `wire_to_fs` refuses every string that is not one.

A normalized path is absolute (``/`` or ``/a/b``): no trailing slash, no empty,
``.`` or ``..`` components, no NUL, and valid wire form.
"""

from __future__ import annotations

import re

from bkup.errors import IntegrityError

SEP = "/"
ROOT = "/"

# surrogateescape turns each undecodable byte 0x80..0xff into U+DC80..U+DCFF.
_TO_WIRE = {0xDC00 + b: f"\\x{b:02x}" for b in range(0x80, 0x100)}
_TO_WIRE[ord("\\")] = "\\\\"
_ESCAPE = re.compile(r"\\(?:x([0-9a-f]{2})|(\\))")


class UnsafePath(IntegrityError, ValueError):
    """A path or name that is malformed or could escape its place (.., empty, NUL, bad escape)."""


def fs_to_wire(b: bytes) -> str:
    """The wire form of a file system path or name (bytes without NUL)."""
    if b"\0" in b:
        raise UnsafePath(f"NUL byte in path {b!r:.200}")
    if b"\\" not in b:
        try:
            return b.decode("utf-8")
        except UnicodeDecodeError:
            pass
    return b.decode("utf-8", "surrogateescape").translate(_TO_WIRE)


def _unescape(match: re.Match[str]) -> str:
    hex_byte, backslash = match.groups()
    if backslash:
        return backslash
    byte = int(hex_byte, 16)
    # ASCII escapes are never canonical; decoding them plainly lets the round trip refuse them.
    return chr(byte) if byte < 0x80 else chr(0xDC00 + byte)


def wire_to_fs(s: str) -> bytes:
    """The file system bytes of a wire-form path or name: the exact inverse of fs_to_wire."""
    if "\0" in s:
        raise UnsafePath(f"NUL in path {s!r:.200}")
    if "\\" not in s:
        try:
            return s.encode("utf-8")
        except UnicodeEncodeError:
            raise UnsafePath(f"path holds characters that are not UTF-8 encodable: {s!r:.200}") from None
    try:
        b = _ESCAPE.sub(_unescape, s).encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise UnsafePath(f"path holds characters that are not UTF-8 encodable: {s!r:.200}") from None
    # Only the canonical spelling is accepted: \x41 for "A", \xc3\xa9 for "é",
    # uppercase hex or a stray lone surrogate would give one file two names.
    if fs_to_wire(b) != s:
        what = "malformed escape" if "\\" in _ESCAPE.sub("", s) else "needless escape or stray surrogate"
        raise UnsafePath(f"not a canonical wire-form path ({what}): {s!r:.200}")
    return b


def _check_component(part: str, path: str) -> None:
    if not part:
        raise UnsafePath(f"empty component in path {path!r:.200}")
    if part in (".", ".."):
        raise UnsafePath(f"{part!r} component in path {path!r:.200}")


def _check_wire(path: str) -> None:
    if "\\" not in path:
        if "\0" in path:
            raise UnsafePath(f"NUL in path {path!r:.200}")
        try:
            path.encode("utf-8")
        except UnicodeEncodeError:
            raise UnsafePath(f"path holds characters that are not UTF-8 encodable: {path!r:.200}") from None
    else:
        wire_to_fs(path)


def normalize(path: str) -> str:
    """`path` checked as an absolute wire-form path; a single trailing slash is dropped, nothing else is repaired."""
    if not isinstance(path, str) or not path.startswith(SEP):
        raise UnsafePath(f"not an absolute path: {path!r:.200}")
    if path == ROOT:
        return ROOT
    if path.endswith(SEP):
        path = path[:-1]
    # An empty, "." or ".." component needs "//", "/." or a slash still at the end: only such
    # paths are checked part by part (a commit checks thousands of paths).
    if "//" in path or "/." in path or path.endswith(SEP):
        for part in path[1:].split(SEP):
            _check_component(part, path)
    _check_wire(path)
    return path


def is_normalized(path: str) -> bool:
    try:
        return normalize(path) == path
    except UnsafePath:
        return False


def parent_of(path: str) -> str:
    """The parent directory of a normalized path; "" for the root, which has none."""
    if path == ROOT:
        return ""
    head = path.rpartition(SEP)[0]
    return head or ROOT


def name_of(path: str) -> str:
    """The last component of a normalized path; "" for the root."""
    return path.rpartition(SEP)[2]


def join(parent: str, name: str) -> str:
    """`parent` (normalized) plus one component `name` (wire form), checked."""
    if SEP in name:
        raise UnsafePath(f"'/' in name {name!r:.200}")
    _check_component(name, name)
    _check_wire(name)
    return (parent if parent != ROOT else "") + SEP + name


def is_under(path: str, prefix: str) -> bool:
    """True if `path` is `prefix` or inside it (both normalized); "/" contains every path."""
    if prefix == ROOT:
        return path.startswith(SEP)
    return path == prefix or path.startswith(prefix + SEP)


def relative_parts(path: str, base: str = ROOT) -> list[str]:
    """The validated components of `path` below `base`: what restore joins onto its target.

    Raises UnsafePath for anything malformed, or for a path outside `base`.
    """
    path = normalize(path)
    base = normalize(base)
    if not is_under(path, base):
        raise UnsafePath(f"path {path!r:.200} is not under {base!r:.200}")
    rest = path[len(base) :] if base != ROOT else path
    return [part for part in rest.split(SEP) if part] if rest else []
