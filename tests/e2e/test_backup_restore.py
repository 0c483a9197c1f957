"""serve, user add, client add, agent --once, ls, restore: real processes over HTTP, on SQLite + disk and PostgreSQL + S3."""

from __future__ import annotations

import os
import random
from pathlib import Path

from tests.trees import snapshot


def make_tree(root: Path) -> None:
    rnd = random.Random(42)
    (root / "docs" / "deep" / "er").mkdir(parents=True)
    (root / "empty-dir").mkdir()
    (root / "docs" / "a.txt").write_text("hello bkup\n" * 100)
    (root / "docs" / "deep" / "er" / "big.bin").write_bytes(rnd.randbytes(3 * 1024 * 1024 + 17))
    (root / "docs" / "copy.bin").write_bytes((root / "docs" / "deep" / "er" / "big.bin").read_bytes())
    (root / "empty.txt").write_bytes(b"")
    (root / "run.sh").write_text("#!/bin/sh\necho hi\n")
    os.chmod(root / "run.sh", 0o750)
    (root / "secret").write_text("s")
    os.chmod(root / "secret", 0o600)
    os.symlink("docs/a.txt", root / "link-to-a")
    os.symlink("/nonexistent/target", root / "dangling")
    # Names Linux allows that UTF-8 and JSON do not make easy.
    os.mkdir(os.path.join(os.fsencode(root), b"odd \xff\xfe dir"))
    with open(os.path.join(os.fsencode(root), b"odd \xff\xfe dir", b"new\nline \\ back"), "wb") as f:
        f.write(b"odd")
    (root / "unicod\u00e9 \u2603.txt").write_text("snow")
    os.utime(root / "docs" / "a.txt", ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))
    os.utime(root / "docs", ns=(1_500_000_000_000_000_000, 1_500_000_000_000_000_000))


def restored_root(target: Path, src: Path) -> Path:
    return target / str(src).lstrip("/")


def test_backup_and_restore_end_to_end(bkup, tmp_path):
    bkup.serve()
    bkup.run("user", "add", "alice", "--password-stdin", input="correct-horse\n")
    created = bkup.json("client", "add", "laptop", "--user", "alice", "--json")
    assert created["name"] == "laptop" and created["token"].startswith("bkup_a_")
    token = created["token"]
    src = tmp_path / "src"
    src.mkdir()
    make_tree(src)
    before = snapshot(src)

    agent = ["agent", "--server", bkup.url, "--token", token, "--path", str(src), "--once", "--json"]
    first = bkup.json(*agent)
    assert first["run"] == 1
    assert first["files_changed"] == 8
    assert first["bytes_uploaded"] > 0

    # Nothing changed: nothing uploaded, nothing committed.
    second = bkup.json(*agent)
    assert second["run"] == 2
    assert (second["files_changed"], second["files_deleted"], second["bytes_uploaded"]) == (0, 0, 0)

    listing = bkup.json("ls", "--server", bkup.url, "--token", token, "--client", "laptop", str(src / "docs"), "--json")
    assert {(e["path"].rsplit("/", 1)[1], e["kind"]) for e in listing} >= {("a.txt", "file"), ("deep", "dir"), ("copy.bin", "file")}
    a = next(e for e in listing if e["path"].endswith("/a.txt"))
    assert a["size"] == 1100 and a["mtime"].startswith("2020-09-13")

    target = tmp_path / "restore"
    bkup.run("restore", "--server", bkup.url, "--token", token, "--client", "laptop", "--target", str(target))
    assert snapshot(restored_root(target, src)) == before

    # A target that is not empty is refused unless --overwrite; nothing is touched.
    again = bkup.run("restore", "--server", bkup.url, "--token", token, "--client", "laptop", "--target", str(target), check=False)
    assert again.returncode != 0 and "not empty" in again.stderr

    # Change a file, delete one, add one: run 3; run 1 still restores the old tree.
    (src / "docs" / "a.txt").write_text("changed\n")
    (src / "secret").unlink()
    (src / "new.txt").write_text("new")
    third = bkup.json(*agent)
    assert (third["files_changed"], third["files_deleted"]) == (2, 1)
    old = tmp_path / "old"
    bkup.run("restore", "--server", bkup.url, "--token", token, "--client", "laptop", "--run", "1", "--path", str(src / "docs"), "--target", str(old))
    assert (restored_root(old, src) / "docs" / "a.txt").read_text() == "hello bkup\n" * 100
    assert not (restored_root(old, src) / "secret").exists()
    now = tmp_path / "now"
    bkup.run("restore", "--server", bkup.url, "--token", token, "--client", "laptop", "--target", str(now))
    assert snapshot(restored_root(now, src)) == snapshot(src)


def test_clear_errors(bkup, tmp_path):
    bkup.serve()
    bkup.run("user", "add", "alice", "--password-stdin", input="correct-horse\n")
    token = bkup.json("client", "add", "laptop", "--user", "alice", "--json")["token"]
    r = bkup.run("restore", "--server", bkup.url, "--token", token, "--client", "nope", "--target", str(tmp_path / "t"), check=False)
    assert r.returncode == 1 and "nope" in r.stderr and "Traceback" not in r.stderr
    r = bkup.run("ls", "--server", bkup.url, "--token", "bkup_a_wrong", "--client", "laptop", check=False)
    assert r.returncode == 1 and "token" in r.stderr and "Traceback" not in r.stderr
    r = bkup.run("user", "add", "alice", "--password-stdin", input="correct-horse\n", check=False)
    assert r.returncode == 1 and "already exists" in r.stderr
    r = bkup.run("client", "add", "x", "--user", "ghost", check=False)
    assert r.returncode == 1 and "ghost" in r.stderr
    r = bkup.run("agent", "--server", bkup.url, "--user", "alice", "--password-stdin", "--path", str(tmp_path), "--once",
                 input="wrong-password\n", check=False)
    assert r.returncode == 1 and "wrong user name or password" in r.stderr


def test_agent_registers_itself_with_user_and_password(bkup, tmp_path):
    bkup.serve()
    bkup.run("user", "add", "alice", "--password-stdin", input="correct-horse\n")
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x")
    out = bkup.json("agent", "--server", bkup.url, "--user", "alice", "--password-stdin", "--name", "box1",
                    "--path", str(src), "--once", "--json", input="correct-horse\n")
    assert out["run"] == 1 and out["files_changed"] == 1
    # The stored agent token is reused: no password needed the second time.
    again = bkup.json("agent", "--server", bkup.url, "--path", str(src), "--once", "--json")
    assert again["run"] == 2 and again["files_changed"] == 0
