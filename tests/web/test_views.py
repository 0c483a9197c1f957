"""Read-only page views on one shared, seeded server per module: facts shown, ownership (404), downloads streamed."""

from __future__ import annotations

import io
import re
import tarfile

import pytest
from web_kit import API, client, login, open_world, post_form
from litestar.testing import TestClient

from bkup.catalog.db import Catalog
from bkup.server.app import create_app
from bkup.server.context import open_context
from bkup.web import downloads


@pytest.fixture(scope="module")
def world(tmp_path_factory, migrated_catalog):
    """One server for the whole module: these tests only read (or fail to write)."""
    with open_world(tmp_path_factory.mktemp("views"), migrated_catalog) as w:
        yield w


@pytest.fixture
def as_bob(browser_factory, bob) -> TestClient:
    web = browser_factory()
    assert login(web, bob.name, bob.password).status_code == 200
    return web


def main_html(r) -> str:
    return r.text.split("<main>", 1)[1].split("</main>", 1)[0]


def test_a_session_works_on_every_replica(as_alice, settings, ctx):
    """Sessions live in the catalog: another server on the same database knows the cookie."""
    other_ctx = open_context(settings, catalog=Catalog(settings.effective_database_url), store=ctx.store)
    try:
        replica = client(create_app(settings, context=other_ctx))
        replica.cookies.set("bkup_session", as_alice.cookies.get("bkup_session"))
        r = replica.get("/")
        assert r.status_code == 200 and "alice-pc" in r.text
    finally:
        other_ctx.close()


def test_a_user_sees_only_their_own_clients(as_alice, alice, bob):
    html = main_html(as_alice.get("/"))
    assert "alice-pc" in html and "bob-pc" not in html
    assert "bob-pc" not in as_alice.get("/clients").text
    nav = as_alice.get("/").text.split("<main>")[0]
    assert 'href="/users"' not in nav and 'href="/server"' not in nav
    b = bob.client_id
    for page in [f"/clients/{b}", f"/clients/{b}/runs/1", f"/clients/{b}/browse", f"/clients/{b}/browse?path=/home/bob/docs",
                 f"/clients/{b}/history?path=/home/bob/docs/a.txt", f"/clients/{b}/download?path=/home/bob/docs/a.txt&run=1",
                 f"/clients/{b}/tar?path=/home/bob", f"/clients/{b}/delete", "/clients/9999"]:
        r = as_alice.get(page)
        assert r.status_code == 404, page
        assert "bob" not in main_html(r), page
    for action in [f"/clients/{b}/backup", f"/clients/{b}/config", f"/clients/{b}/token", f"/clients/{b}/delete"]:
        r = post_form(as_alice, "/clients", action, {"confirm": "bob-pc", "paths": "/x"})
        assert r.status_code == 404, action
    for page in ["/users", "/server", f"/users/{bob.user_id}/delete"]:
        r = as_alice.get(page)
        assert r.status_code == 403 and "needs an admin account" in r.text, page
    for action in ["/users", f"/users/{bob.user_id}/password", f"/users/{bob.user_id}/admin", f"/users/{bob.user_id}/delete"]:
        r = post_form(as_alice, "/", action, {"name": "mallory", "password": "long-enough-1", "is_admin": "1", "confirm": "bob"})
        assert r.status_code == 403, action
    api = client(as_alice.app)
    assert api.get(f"{API}/clients/{b}", headers=bob.agent).status_code == 200  # bob's client is untouched


def test_client_page_shows_status_runs_errors_config_and_logs(as_alice, alice):
    api = client(as_alice.app)
    entries = [{"ts": f"2026-01-01T00:00:0{i}Z", "level": lvl, "message": f"line {i} {lvl}", "run_seq": 2}
               for i, lvl in enumerate(["debug", "info", "warning", "error"])]
    assert api.post(f"{API}/agent/logs", json={"entries": entries}, headers=alice.agent).status_code == 200
    html = main_html(as_alice.get(f"/clients/{alice.client_id}"))
    assert "<h1>alice-pc" in html and 'data-state="ok"' in html
    assert 'data-seq="2"' in html and 'data-seq="1"' in html
    assert "1 file could not be read: /home/x/locked" in html
    assert 'id="config-form"' in html and 'name="commands"' in html and 'name="paths"' in html
    assert 'id="backup-now"' in html and f'href="/clients/{alice.client_id}/browse"' in html
    assert all(f"line {i}" in html for i in range(4))
    html = main_html(as_alice.get(f"/clients/{alice.client_id}?level=warning"))
    assert "line 2 warning" in html and "line 3 error" in html and "line 1 info" not in html
    assert '<option value="warning" selected>' in html


def test_run_page_lists_added_changed_and_deleted_files_with_download_links(as_alice, alice):
    cid = alice.client_id
    html = main_html(as_alice.get(f"/clients/{cid}/runs/2"))
    section = lambda kind: html.split(f'id="{kind}"', 1)[1].split("<h2", 1)[0]
    assert f"/clients/{cid}/download?path=%2Fhome%2Falice%2Fdocs%2Fc.txt&amp;run=2" in section("added")
    assert f"/clients/{cid}/download?path=%2Fhome%2Falice%2Fdocs%2Fa.txt&amp;run=2" in section("changed")
    assert f"/clients/{cid}/download?path=%2Fhome%2Falice%2Fdocs%2Fb.txt&amp;run=1" in section("deleted")
    assert "1 file could not be read" in html
    html = main_html(as_alice.get(f"/clients/{cid}/runs/1"))
    assert "big.bin" in html and "a.txt" in html and "b.txt" in html and "link" in html
    assert as_alice.get(f"/clients/{cid}/runs/3").status_code == 404


def test_browser_shows_a_directory_as_of_a_run_or_a_time(as_alice, alice):
    cid = alice.client_id
    html = main_html(as_alice.get(f"/clients/{cid}/browse?path=/home/alice/docs"))
    names = re.findall(r'data-name="([^"]+)" data-kind="([^"]+)"', html)
    assert names == [("sub", "dir"), ("a.txt", "file"), ("c.txt", "file"), ("link", "symlink")]
    assert "as of run #2" in html and "204 B" in html and "→ a.txt" in html
    assert "-rw-r--r--" in html and "2023-11-14 22:13:21 UTC" in html
    html = main_html(as_alice.get(f"/clients/{cid}/browse?path=/home/alice/docs&run=1"))
    assert [n for n, _ in re.findall(r'data-name="([^"]+)" data-kind="([^"]+)"', html)] == ["sub", "a.txt", "b.txt", "link"]
    assert "as of run #1" in html
    html = main_html(as_alice.get(f"/clients/{cid}/browse?path=/home/alice/docs&at=2099-01-01T00:00"))
    assert "as of run #2" in html
    r = as_alice.get(f"/clients/{cid}/browse?path=/home/alice/docs&at=2000-01-01T00:00")
    assert r.status_code == 404 and "no backup at or before 2000-01-01" in r.text
    r = as_alice.get(f"/clients/{cid}/browse?path=/home/../etc")
    assert r.status_code == 400
    html = main_html(as_alice.get(f"/clients/{cid}/browse"))  # the root, directory by directory
    assert re.findall(r'data-name="([^"]+)"', html) == ["home"]


def test_history_lists_every_version_with_its_download(as_alice, alice):
    cid = alice.client_id
    html = main_html(as_alice.get(f"/clients/{cid}/history?path=/home/alice/docs/a.txt"))
    assert re.findall(r'data-from="(\d+)"', html) == ["2", "1"]
    assert "current" in html and "(gone)" in html
    assert f"/clients/{cid}/download?path=%2Fhome%2Falice%2Fdocs%2Fa.txt&amp;run=1" in html


def test_downloading_any_version_of_a_file(as_alice, alice):
    cid = alice.client_id
    for (path, run), body in alice.files.items():
        r = as_alice.get(f"/clients/{cid}/download", params={"path": path, "run": run})
        assert r.status_code == 200, (path, run)
        assert r.content == body, (path, run)
        assert r.headers["content-length"] == str(len(body))
        assert r.headers["content-disposition"].startswith(f'attachment; filename="{path.rsplit("/", 1)[1]}"')
    # Without a run: the latest.
    assert as_alice.get(f"/clients/{cid}/download?path=/home/alice/docs/a.txt").content == alice.files[("/home/alice/docs/a.txt", 2)]
    r = as_alice.get(f"/clients/{cid}/download?path=/home/alice/docs/b.txt&run=2")
    assert r.status_code == 404
    r = as_alice.get(f"/clients/{cid}/download?path=/home/alice/docs&run=2")
    assert r.status_code == 400 and "not a file" in r.text


def test_downloads_read_a_few_chunks_at_a_time(as_alice, alice, monkeypatch):
    """Streaming: chunk reads are batched (never the whole file), and a repeated chunk comes out twice."""
    from bkup.server import reads

    asked: list[int] = []
    real = reads.read_chunks

    def spy(ctx, principal, client_id, ids):
        asked.append(len(ids))
        return real(ctx, principal, client_id, ids)

    monkeypatch.setattr(reads, "read_chunks", spy)
    monkeypatch.setattr(downloads, "BATCH", 2)
    big = alice.files[("/home/alice/docs/sub/big.bin", 2)]
    r = as_alice.get(f"/clients/{alice.client_id}/download?path=/home/alice/docs/sub/big.bin")
    assert r.content == big
    assert asked == [2, 1]


def test_downloading_a_directory_as_tar(as_alice, alice):
    cid = alice.client_id
    r = as_alice.get(f"/clients/{cid}/tar?path=/home/alice/docs&run=1")
    assert r.status_code == 200 and r.headers["content-type"] == "application/x-tar"
    assert "alice-pc-docs-run1.tar" in r.headers["content-disposition"]
    with tarfile.open(fileobj=io.BytesIO(r.content)) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert sorted(members) == ["docs", "docs/a.txt", "docs/b.txt", "docs/link", "docs/sub", "docs/sub/big.bin"]
        assert tar.extractfile("docs/a.txt").read() == alice.files[("/home/alice/docs/a.txt", 1)]
        assert tar.extractfile("docs/sub/big.bin").read() == alice.files[("/home/alice/docs/sub/big.bin", 2)]
        assert members["docs/link"].issym() and members["docs/link"].linkname == "a.txt"
        assert members["docs"].isdir() and members["docs/a.txt"].mode == 0o644
        assert members["docs/a.txt"].mtime == 1_700_000_000
    r = as_alice.get(f"/clients/{cid}/tar")  # the whole client, latest run
    with tarfile.open(fileobj=io.BytesIO(r.content)) as tar:
        names = tar.getnames()
    assert "home/alice/docs/c.txt" in names and "home/alice/docs/b.txt" not in names
    assert as_alice.get(f"/clients/{cid}/tar?path=/home/alice/docs/a.txt").status_code == 400
    assert as_alice.get(f"/clients/{cid}/tar?path=/nope").status_code == 404


def test_server_page_shows_storage_database_and_maintenance(as_root, root):
    html = main_html(as_root.get("/server"))
    assert '<dd class="mono" id="storage-url">memory://test</dd>' in html
    assert '<span id="database-kind">sqlite</span>' in html
    for action in ("prune", "gc", "check"):
        assert f'action="/server/{action}"' in html


def test_assets_ship_with_the_package_and_pages_load_nothing_from_elsewhere(as_root, alice):
    pages = ["/", "/clients", f"/clients/{alice.client_id}", f"/clients/{alice.client_id}/browse?path=/home/alice/docs",
             f"/clients/{alice.client_id}/runs/1", "/users", "/server", "/account"]
    for page in pages:
        html = as_root.get(page).text
        external = re.findall(r'(?:src|href)="(https?:)?//', html)
        assert external == [], page
        assert '<meta name="viewport"' in html
    for asset in ("/static/bkup.css", "/static/bkup.js", "/static/favicon.svg"):
        r = as_root.get(asset)
        assert r.status_code == 200 and len(r.content) > 100, asset


def test_errors_are_pages_not_json(as_alice):
    r = as_alice.get("/clients/12345")
    assert r.status_code == 404 and r.headers["content-type"].startswith("text/html")
    assert "404 · Not found" in r.text and "no client 12345" in r.text
    r = as_alice.get("/clients/1/browse?run=0")
    assert r.status_code == 400 and r.headers["content-type"].startswith("text/html")


def test_the_api_still_answers_json(as_alice):
    r = as_alice.get(f"{API}/clients")
    assert r.status_code == 401 and r.json()["detail"].startswith("authentication required")


@pytest.mark.parametrize("name", ["odd name \\xff", "new\nline \"quoted\"; x", "snow \u2603.txt"])
def test_download_names_are_safe_headers(name):
    header = downloads.content_disposition(downloads.display_name(name).encode("utf-8", "replace").decode())
    assert "\n" not in header and header.isascii()
    assert header.count('"') == 2
