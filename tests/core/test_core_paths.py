"""Paths: the wire form round-trips every name, and only safe, canonical paths pass."""

from __future__ import annotations

import random

import pytest

from bkup.core.paths import (
    UnsafePath,
    fs_to_wire,
    is_normalized,
    is_under,
    join,
    name_of,
    normalize,
    parent_of,
    relative_parts,
    wire_to_fs,
)
from bkup.errors import IntegrityError

try:
    from hypothesis import given, settings
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover
    given = None

WIRE_EXAMPLES = [
    (b"plain.txt", "plain.txt"),
    (b"caf\xc3\xa9", "café"),
    ("日本語 ☃ 😀".encode(), "日本語 ☃ 😀"),
    (b"\xff", "\\xff"),
    (b"latin1-caf\xe9", "latin1-caf\\xe9"),
    (b"a\\b", "a\\\\b"),
    (b"\\x41", "\\\\x41"),  # a literal backslash-x name is not an escape
    (b"\\", "\\\\"),
    (b"\xc3", "\\xc3"),  # truncated sequence
    (b"\xc0\xaf", "\\xc0\\xaf"),  # overlong "/"
    (b"\xed\xa0\x80", "\\xed\\xa0\\x80"),  # UTF-8-encoded surrogate
    (b"\xf4\x90\x80\x80", "\\xf4\\x90\\x80\\x80"),  # beyond U+10FFFF
    (b"\x80\\\xe9t\xc3\xa9", "\\x80\\\\\\xe9té"),
    (b"/home/u/\xff/x", "/home/u/\\xff/x"),
    (b"\x01\x7f", "\x01\x7f"),  # control characters are valid UTF-8
]


@pytest.mark.parametrize(("fs", "wire"), WIRE_EXAMPLES)
def test_wire_form_examples(fs: bytes, wire: str) -> None:
    assert fs_to_wire(fs) == wire
    assert wire_to_fs(wire) == fs


def test_fast_path_returns_text_unchanged() -> None:
    assert fs_to_wire(b"/etc/passwd") == "/etc/passwd"
    assert wire_to_fs("/etc/passwd") == b"/etc/passwd"


def random_name(rng: random.Random) -> bytes:
    pieces = [
        lambda: bytes([rng.randint(1, 0x7F)]),
        lambda: bytes([rng.randint(0x80, 0xFF)]),
        lambda: b"\\",
        lambda: b"\\x",
        lambda: rng.choice(["é", "日", "😀", "\u2028"]).encode(),
        lambda: rng.choice(["é", "日", "😀"]).encode()[:-1],  # cut short
        lambda: b"\xed" + bytes([rng.randint(0x80, 0xBF), rng.randint(0x80, 0xBF)]),
        lambda: b"/",
    ]
    return b"".join(rng.choice(pieces)() for _ in range(rng.randint(1, 24)))


def test_round_trip_over_random_names() -> None:
    rng = random.Random(2024)
    for _ in range(20_000):
        name = random_name(rng)
        wire = fs_to_wire(name)
        assert wire_to_fs(wire) == name
        wire.encode("utf-8")  # always valid text: JSON, SQLite and PostgreSQL can hold it
        if b"\\" not in name:
            try:
                assert wire == name.decode("utf-8")
            except UnicodeDecodeError:
                pass


if given is not None:

    @settings(max_examples=1000, deadline=None)
    @given(st.binary(min_size=0, max_size=64).filter(lambda b: b"\0" not in b))
    def test_round_trip_property(name: bytes) -> None:
        wire = fs_to_wire(name)
        assert wire_to_fs(wire) == name
        assert fs_to_wire(wire_to_fs(wire)) == wire

    @settings(max_examples=1000, deadline=None)
    @given(st.text(alphabet=st.sampled_from("ax\\0fF9é/\udc80"), max_size=12))
    def test_wire_to_fs_accepts_only_canonical_strings(s: str) -> None:
        try:
            b = wire_to_fs(s)
        except UnsafePath:
            return
        assert fs_to_wire(b) == s


@pytest.mark.parametrize(
    "bad",
    [
        "\\",  # lone backslash
        "a\\",  # trailing backslash
        "\\q",  # unknown escape
        "\\x4",  # short escape
        "\\xg0",
        "\\xFF",  # uppercase hex is not canonical
        "\\x41",  # "A" needs no escape
        "\\x5c",  # a backslash is written \\
        "\\x2f",  # "/" smuggled as an escape
        "\\xc3\\xa9",  # valid UTF-8 must be written as text
        "\\x00",  # NUL
        "a\0b",
        "\udc80",  # lone surrogate (e.g. from a JSON \udc80 escape)
        "\ud800x",
        "\\\\\udcff",
    ],
)
def test_wire_to_fs_refuses(bad: str) -> None:
    with pytest.raises(UnsafePath):
        wire_to_fs(bad)


def test_fs_to_wire_refuses_nul() -> None:
    with pytest.raises(UnsafePath, match="NUL"):
        fs_to_wire(b"a\0b")


@pytest.mark.parametrize(
    ("path", "normal"),
    [
        ("/", "/"),
        ("/a", "/a"),
        ("/a/b", "/a/b"),
        ("/a/b/", "/a/b"),
        ("/...", "/..."),
        ("/.a/..b/a..", "/.a/..b/a.."),
        ("/a\\\\b/\\xff", "/a\\\\b/\\xff"),
        ("/ spaces /", "/ spaces "),
    ],
)
def test_normalize_accepts(path: str, normal: str) -> None:
    assert normalize(path) == normal
    assert is_normalized(normal)


@pytest.mark.parametrize(
    "path",
    [
        "",
        "a",
        "a/b",
        "./a",
        "../a",
        "//",
        "//a",
        "/a//b",
        "/a/b//",
        "/.",
        "/./a",
        "/a/.",
        "/..",
        "/a/../b",
        "/a/..",
        "/a/\0",
        "/a\\x2f..",
        "/\\x2e\\x2e",
        "/a\\",
        "/\udc80",
        "\\/a",
    ],
)
def test_normalize_refuses(path: str) -> None:
    with pytest.raises(UnsafePath):
        normalize(path)
    assert not is_normalized(path)


def test_normalize_refuses_non_strings() -> None:
    with pytest.raises(UnsafePath):
        normalize(b"/a")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("path", "parent", "name"),
    [("/a/b/c", "/a/b", "c"), ("/a/b", "/a", "b"), ("/a", "/", "a"), ("/", "", "")],
)
def test_parent_and_name(path: str, parent: str, name: str) -> None:
    assert parent_of(path) == parent
    assert name_of(path) == name
    if path != "/":
        assert join(parent, name) == path


@pytest.mark.parametrize("bad", ["", ".", "..", "a/b", "/", "a\0", "\\q", "\udc80"])
def test_join_refuses_bad_names(bad: str) -> None:
    with pytest.raises(UnsafePath):
        join("/a", bad)


@pytest.mark.parametrize(
    ("path", "prefix", "under"),
    [
        ("/a", "/", True),
        ("/", "/", True),
        ("/a", "/a", True),
        ("/a/x", "/a", True),
        ("/a/x/y", "/a", True),
        ("/ab", "/a", False),
        ("/", "/a", False),
        ("/b/a", "/a", False),
        ("/a", "/a/x", False),
    ],
)
def test_is_under(path: str, prefix: str, under: bool) -> None:
    assert is_under(path, prefix) is under


@pytest.mark.parametrize(
    ("path", "base", "parts"),
    [
        ("/", "/", []),
        ("/a/b/c", "/", ["a", "b", "c"]),
        ("/a/b/c", "/a", ["b", "c"]),
        ("/a/b/c", "/a/b/c", []),
        ("/a/b/", "/a/", ["b"]),
        ("/\\xff/\\\\", "/", ["\\xff", "\\\\"]),
    ],
)
def test_relative_parts(path: str, base: str, parts: list[str]) -> None:
    assert relative_parts(path, base) == parts


@pytest.mark.parametrize(
    ("path", "base"),
    [("/a/../../etc", "/"), ("a/b", "/"), ("/ab/c", "/a"), ("/b", "/a"), ("/a", "/a/b"), ("/a//b", "/")],
)
def test_relative_parts_refuses(path: str, base: str) -> None:
    with pytest.raises(UnsafePath):
        relative_parts(path, base)


def test_unsafe_path_is_an_integrity_error() -> None:
    assert issubclass(UnsafePath, IntegrityError)


def test_normalize_refuses_exactly_the_paths_with_an_empty_dot_or_dotdot_component() -> None:
    """normalize checks components one by one only when a path could hold a bad one: compare with doing it always."""
    rng = random.Random(8)
    parts = ["", ".", "..", "...", ".a", "a.", "a..b", "a", "bc"]
    for _ in range(5000):
        path = "/" + "/".join(rng.choice(parts) for _ in range(rng.randint(1, 4))) + rng.choice(["", "/"])
        body = path[:-1] if path.endswith("/") and path != "/" else path
        bad = path != "/" and any(p in ("", ".", "..") for p in body[1:].split("/"))
        if bad:
            with pytest.raises(UnsafePath):
                normalize(path)
        else:
            assert normalize(path) == body, path
