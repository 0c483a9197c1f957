"""The walk: bytes paths of every kind, symlinks not followed, ancestors, excludes, unreadable directories."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bkup.agent import scanner
from bkup.agent.scanner import ScanReport, resolve_roots, scan
from bkup.core.paths import fs_to_wire
from bkup.core.patterns import Excludes


def walk(root: Path | bytes, excludes: list[str] | None = None, **kw) -> tuple[dict[bytes, scanner.ScanEntry], ScanReport]:
    report = ScanReport()
    roots = resolve_roots([root])
    entries = {e.fs_path: e for e in scan(roots, Excludes(excludes or []), report, **kw)}
    return entries, report


def below(entries: dict[bytes, scanner.ScanEntry], root: Path) -> set[bytes]:
    b = os.fsencode(root.resolve())
    return {os.path.relpath(p, b) for p in entries if p.startswith(b + b"/")}


def test_odd_names_round_trip_as_bytes_and_wire(tmp_path):
    root = os.fsencode(tmp_path)
    names = [b"\xff\xfe invalid utf8", b"new\nline", b"back\\slash", b"tab\there", "snow \u2603".encode(), b"-"]
    for n in names:
        with open(os.path.join(root, n), "wb") as f:
            f.write(n)
    entries, report = walk(tmp_path)
    assert report.warnings == []
    for n in names:
        e = entries[os.path.join(os.path.realpath(root), n)]
        assert e.kind == "file" and e.size == len(n)
        assert e.path == fs_to_wire(e.fs_path)
    assert entries[os.path.join(os.path.realpath(root), b"\xff\xfe invalid utf8")].path.endswith("/\\xff\\xfe invalid utf8")


def test_symlinks_are_recorded_not_followed(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("x")
    root = tmp_path / "root"
    root.mkdir()
    (root / "to-outside").symlink_to(outside)
    (root / "loop").symlink_to(root)
    (root / "dangling").symlink_to("/does/not/exist")
    entries, report = walk(root)
    assert report.warnings == []
    assert below(entries, root) == {b"to-outside", b"loop", b"dangling"}
    link = entries[os.fsencode(root.resolve() / "to-outside")]
    assert link.kind == "symlink" and link.link_target == os.fsencode(outside)


def test_metadata_and_ancestors(tmp_path):
    root = tmp_path / "a" / "b"
    root.mkdir(parents=True)
    (root / "suid").write_text("x")
    os.chmod(root / "suid", 0o4751)
    os.utime(root / "suid", ns=(5, 1_234_567_891))
    entries, _ = walk(root)
    e = entries[os.fsencode(root.resolve() / "suid")]
    st = os.lstat(root / "suid")
    assert (e.mode, e.mtime_ns, e.ctime_ns, e.inode, e.dev, e.uid, e.gid) == (
        0o4751, 1_234_567_891, st.st_ctime_ns, st.st_ino, st.st_dev, st.st_uid, st.st_gid
    )
    # The root and every ancestor except "/" are entries, parents first.
    order = list(entries)
    ancestors = [p for p in order if not p.startswith(os.fsencode(root.resolve()) + b"/")]
    assert ancestors[-1] == os.fsencode(root.resolve())
    assert ancestors[0].count(b"/") == 1 and b"/" not in entries
    assert all(entries[p].kind == "dir" for p in ancestors)
    assert order.index(os.fsencode(root.resolve())) < order.index(os.fsencode(root.resolve() / "suid"))


def test_special_files_are_skipped_and_counted(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "f").write_text("x")
    entries, report = walk(tmp_path)
    assert below(entries, tmp_path) == {b"f"}
    assert report.special_skipped == 1 and report.errors == 0


def test_roots_are_resolved_and_nested_roots_merged(tmp_path):
    (tmp_path / "real" / "sub").mkdir(parents=True)
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    roots = resolve_roots([str(tmp_path / "alias"), str(tmp_path / "real" / "sub"), str(tmp_path / "real") + "/"])
    assert roots == [os.fsencode((tmp_path / "real").resolve())]


def test_a_missing_root_is_an_error_and_protects_its_paths(tmp_path):
    entries, report = walk(tmp_path / "nope")
    assert report.errors == 1 and "does not exist" in report.warnings[0]
    assert report.incomplete == [fs_to_wire(os.fsencode(tmp_path.resolve() / "nope"))]


def test_an_unreadable_directory_is_a_warning_not_a_crash(tmp_path, monkeypatch):
    (tmp_path / "locked").mkdir()
    (tmp_path / "locked" / "inside").write_text("x")
    (tmp_path / "open").mkdir()
    (tmp_path / "open" / "f").write_text("x")
    real = os.scandir

    def scandir(path):
        if path.endswith(b"/locked"):
            raise PermissionError(13, "Permission denied", path)
        return real(path)

    monkeypatch.setattr(scanner.os, "scandir", scandir)
    entries, report = walk(tmp_path)
    assert below(entries, tmp_path) == {b"locked", b"open", b"open/f"}
    assert report.errors == 1 and "Permission denied" in report.warnings[0]
    assert report.incomplete == [fs_to_wire(os.fsencode(tmp_path.resolve() / "locked"))]


def test_skip_leaves_a_directory_out(tmp_path):
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "db").write_text("x")
    entries, _ = walk(tmp_path, skip=frozenset({os.fsencode(tmp_path.resolve() / "state")}))
    assert below(entries, tmp_path) == set()


# --- exclude patterns ------------------------------------------------------------------


@pytest.mark.parametrize(
    "patterns, path, is_dir, excluded",
    [
        (["*.tmp"], "a.tmp", False, True),
        (["*.tmp"], "deep/er/a.tmp", False, True),  # no slash: the name at any depth
        (["*.tmp"], "a.tmpx", False, False),
        (["?.c"], "x.c", False, True),
        (["?.c"], "xy.c", False, False),
        (["[ab].txt"], "b.txt", False, True),
        (["[!ab].txt"], "b.txt", False, False),
        (["[!ab].txt"], "c.txt", False, True),
        (["/top"], "top", False, True),  # leading slash: anchored to the root
        (["/top"], "sub/top", False, False),
        (["docs/*.md"], "docs/a.md", False, True),  # a middle slash anchors too
        (["docs/*.md"], "x/docs/a.md", False, False),
        (["docs/*.md"], "docs/sub/a.md", False, False),  # * does not cross /
        (["**/cache"], "cache", True, True),
        (["**/cache"], "a/b/cache", True, True),
        (["a/**/z"], "a/z", False, True),
        (["a/**/z"], "a/b/c/z", False, True),
        (["a/**/z"], "b/a/z", False, False),
        (["logs/**"], "logs/x/y", False, True),
        (["logs/**"], "logs", True, False),
        (["build/"], "build", True, True),  # trailing slash: directories only
        (["build/"], "build", False, False),
        (["build/"], "src/build", True, True),
        (["*.log", "!keep.log"], "keep.log", False, False),  # ! re-includes
        (["*.log", "!keep.log"], "other.log", False, True),
        (["*.log", "!keep.log", "keep.log"], "keep.log", False, True),  # last match wins
        (["#comment", ""], "#comment", False, False),
        (["\\#hash"], "#hash", False, True),
        (["*"], "\udcff odd", False, True),  # undecodable bytes (surrogates) match too
    ],
)
def test_exclude_patterns(patterns, path, is_dir, excluded):
    assert Excludes(patterns).excluded(path, is_dir) is excluded


def test_an_excluded_directory_is_not_descended_and_cannot_be_re_included_into(tmp_path):
    (tmp_path / "node_modules" / "pkg").mkdir(parents=True)
    (tmp_path / "node_modules" / "pkg" / "keep.js").write_text("x")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.py").write_text("x")
    (tmp_path / "src" / "a.pyc").write_text("x")
    (tmp_path / "src" / "keep.pyc").write_text("x")
    entries, _ = walk(tmp_path, ["node_modules/", "*.pyc", "!keep.pyc", "!keep.js"])
    assert below(entries, tmp_path) == {b"src", b"src/a.py", b"src/keep.pyc"}


def test_anchored_patterns_are_relative_to_each_root(tmp_path):
    for r in ("one", "two"):
        (tmp_path / r / "tmp").mkdir(parents=True)
        (tmp_path / r / "tmp" / "x").write_text("x")
        (tmp_path / r / "sub" / "tmp").mkdir(parents=True)
    report = ScanReport()
    roots = resolve_roots([tmp_path / "one", tmp_path / "two"])
    got = {e.fs_path for e in scan(roots, Excludes(["/tmp"]), report)}
    base = os.fsencode(tmp_path.resolve())
    assert base + b"/one/tmp" not in got and base + b"/two/tmp" not in got
    assert base + b"/one/sub/tmp" in got and base + b"/two/sub/tmp" in got
