"""The admin UI in headless Chromium against a real `bkup serve` process, with a real agent backing up a folder.

Chromium is Debian's (/usr/bin/chromium), driven by Playwright through
`executable_path`; `playwright install` is never needed. Without Chromium the
test is skipped, except under CI, where it fails. Screenshots of the main
pages go to test-artifacts/ (not committed; docs/web.md describes them).
"""

from __future__ import annotations

import importlib.util
import io
import os
import re
import shlex
import sys
import tarfile
import threading
from pathlib import Path

import httpx
import pytest

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
FIRST_ADMIN = re.compile(r"Created the first admin user 'admin' with password: (\S+)")


def _e2e():
    """The end-to-end helpers (the `Bkup` process runner), loaded from tests/e2e/conftest.py."""
    spec = importlib.util.spec_from_file_location("bkup_e2e_helpers", Path(__file__).parents[1] / "e2e" / "e2e_kit.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _chromium_or_skip():
    missing = None
    if not os.path.exists(CHROMIUM):
        missing = f"{CHROMIUM} is not installed (apt-get install -y chromium)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            missing = "playwright is not installed (pip install playwright; no browser download needed)"
    if missing:
        if os.environ.get("CI"):
            pytest.fail(missing)
        pytest.skip(missing)


@pytest.fixture
def stack(tmp_path):
    """(a `bkup serve` process, a headless Chromium): started side by side, the server on a thread."""
    _chromium_or_skip()
    from playwright.sync_api import sync_playwright

    e2e = _e2e()
    server = e2e.Bkup(env=e2e.make_env(tmp_path))
    failed: list[BaseException] = []

    def serve() -> None:
        try:
            server.serve()
        except BaseException as exc:  # noqa: BLE001 - re-raised on the test's thread
            failed.append(exc)

    starting = threading.Thread(target=serve)
    starting.start()
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
            starting.join()
            if failed:
                raise failed[0]
            log = next(Path(server.env["BKUP_DATA_DIR"]).parent.glob("serve-*.log")).read_text()
            server.admin_password = FIRST_ADMIN.search(log).group(1)
            yield server, browser
            browser.close()
    finally:
        starting.join()
        server.stop()


def log_in(page, url: str, user: str, password: str) -> None:
    page.goto(f"{url}/login")
    page.fill("#user", user)
    page.fill("#password", password)
    page.click("button[type=submit]")


def test_admin_journey_in_a_real_browser(stack, tmp_path):
    server, browser = stack
    url = server.url
    ARTIFACTS.mkdir(exist_ok=True)
    context = browser.new_context(accept_downloads=True, viewport={"width": 1280, "height": 900})
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=url)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    # CSP violations and script errors land in the console; the 401/403/404 answers this test provokes do too.
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" and "Failed to load resource" not in m.text else None)

    # A wrong password says so; the printed first-admin password works.
    log_in(page, url, "admin", "not-it")
    assert "wrong user name or password" in page.inner_text("#login-error")
    log_in(page, url, "admin", server.admin_password)
    assert page.inner_text("h1") == "Dashboard"
    assert "No clients yet" in page.inner_text("main")

    # Create a client; copy its command with the Copy button.
    page.click("nav >> text=Clients")
    page.fill("#name", "laptop")
    page.click("text=Create client")
    assert "shown only once" in page.inner_text("main")
    page.click("button[data-copy='#agent-command']")
    command = page.evaluate("navigator.clipboard.readText()")
    assert command == page.inner_text("#agent-command")
    argv = shlex.split(command)
    assert argv[:3] == ["bkup", "agent", "--server"] and argv[3] == url and argv[4] == "--token"
    token = argv[5]

    # Run the agent with that command on a folder: run 1, then a change and run 2.
    src = tmp_path / "src"
    (src / "docs" / "deep").mkdir(parents=True)
    v1, v2 = b"first version\n" * 1000, b"second version\n" * 700
    (src / "docs" / "report.txt").write_bytes(v1)
    (src / "docs" / "deep" / "data.bin").write_bytes(os.urandom(300_000))
    (src / "notes.md").write_text("# notes\n")
    agent = [*argv[1:-2], "--path", str(src), "--once"]  # drop the placeholder --path
    assert argv[-2:] == ["--path", "/path/to/back/up"]
    server.run(*agent)

    page.goto(url + "/")
    row = page.locator("tr[data-client='laptop']")
    assert row.locator(".badge").first.inner_text() == "ok"
    page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)

    # The configuration: pre-backup commands, one per line, saved and handed to the agent.
    row.locator("a", has_text="laptop").click()
    laptop_id = re.search(r"/clients/(\d+)$", page.url).group(1)
    page.fill("#commands", "pg_dump -f /tmp/db.sql mydb\n/usr/local/bin/pre-backup --quick")
    page.fill("#paths", str(src))
    page.click("text=Save configuration")
    assert "Configuration saved" in page.inner_text(".flash")
    assert page.input_value("#commands").splitlines() == ["pg_dump -f /tmp/db.sql mydb", "/usr/local/bin/pre-backup --quick"]
    config = httpx.get(f"{url}/api/v1/agent/config", headers={"Authorization": f"Bearer {token}"}).json()
    assert [c["command"] for c in config["commands"]] == ["pg_dump -f /tmp/db.sql mydb", "/usr/local/bin/pre-backup --quick"]
    assert config["paths"] == [str(src)]

    (src / "docs" / "report.txt").write_bytes(v2)
    server.run(*agent)
    page.reload()
    assert page.locator("#runs tr[data-seq='2'] .badge").inner_text() == "ok"
    page.screenshot(path=str(ARTIFACTS / "client.png"), full_page=True)

    # Browse directory by directory down to the file; its history; download the older version.
    page.click("#browse-link")
    for part in [*src.parts[1:], "docs"]:
        page.locator(f"tr[data-name='{part}'] a").first.click()
    assert page.locator("tr[data-name='report.txt']").count() == 1
    page.screenshot(path=str(ARTIFACTS / "browser.png"), full_page=True)
    page.locator("tr[data-name='report.txt'] a", has_text="Versions").click()
    assert page.locator("#versions tr[data-from]").count() == 2
    with page.expect_download() as dl:
        page.locator("#versions tr[data-from='1'] a", has_text="Download").click()
    assert Path(dl.value.path()).read_bytes() == v1
    assert dl.value.suggested_filename == "report.txt"

    # The directory as a tar, as of the latest run.
    page.go_back()
    with page.expect_download() as dl:
        page.click("#download-tar")
    with tarfile.open(fileobj=io.BytesIO(Path(dl.value.path()).read_bytes())) as tar:
        assert sorted(tar.getnames()) == ["docs", "docs/deep", "docs/deep/data.bin", "docs/report.txt"]
        assert tar.extractfile("docs/report.txt").read() == v2
        assert tar.extractfile("docs/deep/data.bin").read() == (src / "docs" / "deep" / "data.bin").read_bytes()

    # A phone-sized look at the dashboard.
    phone = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True)
    p2 = phone.new_page()
    p2.context.add_cookies(context.cookies())
    p2.goto(url + "/")
    p2.screenshot(path=str(ARTIFACTS / "dashboard-phone.png"), full_page=True)
    phone.close()

    # A second, non-admin user cannot see the first one's client.
    page.click("nav >> text=Users")
    page.fill("#new-name", "dave")
    page.fill("#new-password", "dave-password")
    page.click("text=Create user")
    assert "User dave created." in page.inner_text(".flash")
    page.click("text=Log out")
    assert "You are signed out." in page.inner_text(".flash")
    log_in(page, url, "dave", "dave-password")
    assert page.inner_text("h1") == "Dashboard"
    assert "laptop" not in page.inner_text("main")
    assert page.locator("nav a", has_text="Users").count() == 0
    response = page.goto(f"{url}/clients/{laptop_id}")
    assert response.status == 404 and "laptop" not in page.inner_text("main")
    response = page.goto(f"{url}/users")
    assert response.status == 403

    assert errors == []
    context.close()
