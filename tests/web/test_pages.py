"""The admin pages in-process: each page shows its facts, forms need CSRF, other users' objects are 404, downloads stream."""

from __future__ import annotations

import io
import re
import tarfile
from datetime import timedelta

from web_kit import API, client, csrf_of, login, post_form
from sqlmodel import select

from bkup.catalog.models import Token
from bkup.server import accounts


def main_html(r) -> str:
    return r.text.split("<main>", 1)[1].split("</main>", 1)[0]


def test_login_failure_shows_a_message_and_success_lands_on_the_dashboard(browser_factory, alice):
    web = browser_factory()
    r = login(web, "alice", "not-the-password")
    assert r.status_code == 401
    assert "wrong user name or password" in r.text
    assert 'value="alice"' in r.text  # the name stays filled in
    r = login(web, "nobody", "whatever-else")
    assert r.status_code == 401 and "wrong user name or password" in r.text
    r = login(web, "alice", alice.password)
    assert r.status_code == 200 and str(r.url).endswith("/")
    assert "<h1>Dashboard</h1>" in r.text and "alice-pc" in r.text
    cookie = next(c for c in web.cookies.jar if c.name == "bkup_session")
    assert cookie.has_nonstandard_attr("HttpOnly")
    set_cookie = next(h for h in r.history[0].headers.get_list("set-cookie") if h.startswith("bkup_session="))
    assert "HttpOnly" in set_cookie and "SameSite=lax" in set_cookie.replace("samesite", "SameSite")


def test_failed_logins_are_rate_limited(browser_factory, alice):
    web = browser_factory()
    codes = [login(web, "alice", "wrong-password").status_code for _ in range(11)]
    assert codes[:10] == [401] * 10 and codes[10] == 429
    r = login(web, "alice", alice.password)  # even the right password waits
    assert r.status_code == 429 and "too many failed logins" in r.text


def test_pages_need_a_session_and_come_back_after_login(browser_factory, alice):
    web = browser_factory()
    r = web.get(f"/clients/{alice.client_id}?level=error", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/login?next=")
    r = web.get(r.headers["location"])
    r = web.post("/login", data={"user": "alice", "password": alice.password, "csrf_token": csrf_of(r.text),
                                 "next": f"/clients/{alice.client_id}?level=error"})
    assert r.status_code == 200 and str(r.url).endswith(f"/clients/{alice.client_id}?level=error")
    # next= never leaves the site
    r = web.get("/login?next=//evil.example/x", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/"


def test_forms_without_the_csrf_token_are_refused(as_alice, browser_factory, alice):
    for action, data in [("/clients", {"name": "sneaky"}), (f"/clients/{alice.client_id}/backup", {}),
                         (f"/clients/{alice.client_id}/delete", {"confirm": "alice-pc"}), ("/logout", {})]:
        r = as_alice.post(action, data=data)
        assert r.status_code == 403, action
        assert "did not come from this site" in r.text
        r = as_alice.post(action, data={**data, "csrf_token": "0" * 64})
        assert r.status_code == 403, action
    assert as_alice.get(f"/clients/{alice.client_id}").status_code == 200  # nothing was deleted
    # The login form is protected too, with its pre-session token.
    fresh = browser_factory()
    assert fresh.post("/login", data={"user": "alice", "password": alice.password}).status_code == 403
    # A token of another session is no good either.
    other = browser_factory()
    login(other, "alice", alice.password)
    foreign = csrf_of(other.get("/clients").text)
    assert as_alice.post("/clients", data={"name": "sneaky", "csrf_token": foreign}).status_code == 403


def test_logout_ends_the_session_on_the_server(as_alice, ctx):
    cookie = as_alice.cookies.get("bkup_session")
    r = post_form(as_alice, "/", "/logout")
    assert r.status_code == 200 and "You are signed out." in r.text
    other = client(as_alice.app)
    other.cookies.set("bkup_session", cookie)
    assert other.get("/", follow_redirects=False).status_code == 303
    with ctx.catalog.session() as s:
        assert s.exec(select(Token).where(Token.kind == "web")).all() == []


def test_expired_session_sends_to_login_with_a_message(as_alice, ctx):
    with ctx.catalog.session() as s:
        tok = s.exec(select(Token).where(Token.kind == "web")).one()
        tok.last_used_at = tok.last_used_at - timedelta(hours=13)
        s.add(tok)
        s.commit()
    r = as_alice.get("/clients")
    assert str(r.url).startswith("http://testserver.local/login")
    assert "expired" in r.text


def test_dashboard_shows_every_client_with_status_sizes_totals_and_charts(as_root, alice, root, ctx):
    # alice's client fails its next run: it needs attention and goes on top.
    api = client(as_root.app)
    r = api.post(f"{API}/runs", json={"trigger": "schedule"}, headers=alice.agent)
    run = r.json()
    api.post(f"{API}/runs/{run['id']}/finish", headers=alice.agent,
             json={"status": "failed", "stats": {}, "error": "disk on fire"})
    html = main_html(as_root.get("/"))
    rows = re.findall(r'<tr class="([^"]*)" data-client="([^"]+)">', html)
    assert rows == [("attention", "alice-pc"), ("", "root-pc")]
    assert 'data-state="failing"' in html and 'data-state="ok"' in html
    assert "disk on fire" in html
    assert "706.7 KiB" in html  # protected bytes of each client (current files)
    assert '<b id="total-clients">2</b>' in html and '<b id="total-attention">1</b>' in html
    assert re.search(r'<b id="total-stored">[\d.]+ KiB</b>', html)
    assert re.search(r'<b id="total-ratio">[\d.]+×</b>', html)
    assert html.count("<svg") == 2 and "<path class=\"line\"" in html and "<rect class=\"bar-failed\"" in html


def test_creating_a_client_shows_its_token_once_with_the_agent_command(as_alice):
    r = post_form(as_alice, "/clients", "/clients", {"name": "laptop"})
    assert r.status_code == 201
    token = re.search(r'<pre id="agent-token">(bkup_a_[^<]+)</pre>', r.text).group(1)
    command = re.search(r'<pre id="agent-command">([^<]+)</pre>', r.text).group(1)
    assert command == f"bkup agent --server http://testserver.local --token {token} --path /path/to/back/up"
    assert r.headers["cache-control"] == "no-store"
    api = client(as_alice.app)
    me = api.get(f"{API}/agent/me", headers={"Authorization": f"Bearer {token}"}).json()
    assert me["name"] == "laptop" and me["user"] == "alice"
    page = as_alice.get(f"/clients/{me['id']}").text
    assert token not in page and "laptop" in page
    r = post_form(as_alice, "/clients", "/clients", {"name": "laptop"}, headers={"referer": "http://testserver.local/clients"})
    assert r.status_code == 200 and "client name &#39;laptop&#39; is taken" in r.text  # flashed back on the form page
    r = post_form(as_alice, "/clients", "/clients", {"name": "../bad"})
    assert r.status_code == 400 and "invalid client name" in r.text


def test_configuration_form_saves_what_the_agent_then_fetches(as_alice, alice):
    page = f"/clients/{alice.client_id}"
    form = {"paths": "/home/alice\n/etc\n", "exclude": "*.tmp\nnode_modules/", "include": "", "schedule": "every 2h",
            "watch": "1", "commands": "pg_dump -f /var/backups/db.sql mydb\n\n/usr/local/bin/snapshot --quiet\n",
            "bandwidth_limit_kbps": ""}
    r = post_form(as_alice, page, f"{page}/config", form)
    assert r.status_code == 200 and "Configuration saved (version 1)" in r.text
    assert "pg_dump -f /var/backups/db.sql mydb\n/usr/local/bin/snapshot --quiet" in r.text
    api = client(as_alice.app)
    config = api.get(f"{API}/agent/config", headers=alice.agent).json()
    assert config["paths"] == ["/home/alice", "/etc"] and config["exclude"] == ["*.tmp", "node_modules/"]
    assert config["schedule"] == "every 2h" and config["watch"] is True and config["bandwidth_limit_kbps"] is None
    assert [c["command"] for c in config["commands"]] == ["pg_dump -f /var/backups/db.sql mydb", "/usr/local/bin/snapshot --quiet"]
    assert all(c["timeout_s"] == 600 and c["shell"] is False for c in config["commands"])
    # The command hint on the page uses the saved paths.
    assert "--path /home/alice --path /etc" in r.text

    bad = {**form, "schedule": "whenever", "commands": "echo kept"}
    r = post_form(as_alice, page, f"{page}/config", bad)
    assert r.status_code == 400
    assert "schedule" in re.search(r'id="config-error">([^<]+)<', r.text).group(1)
    assert "echo kept" in r.text and 'value="whenever"' in r.text  # what was typed is still there
    r = post_form(as_alice, page, f"{page}/config", {**form, "bandwidth_limit_kbps": "fast"})
    assert r.status_code == 400 and "bandwidth_limit_kbps" in r.text


def test_backup_now_reaches_the_agent(as_alice, alice):
    page = f"/clients/{alice.client_id}"
    r = post_form(as_alice, page, f"{page}/backup")
    assert r.status_code == 200 and "Backup requested" in r.text
    api = client(as_alice.app)
    beat = {"agent_version": "0", "hostname": "h", "os": "linux", "state": "idle"}
    assert api.post(f"{API}/agent/heartbeat", json=beat, headers=alice.agent).json()["backup_now"] is True


def test_deleting_a_client_asks_for_its_name_and_removes_its_history(as_alice, alice, ctx):
    cid = alice.client_id
    page = f"/clients/{cid}/delete"
    html = main_html(as_alice.get(page))
    assert "whole backup history" in html and "cannot be undone" in html
    r = post_form(as_alice, page, page, {"confirm": "wrong"}, headers={"referer": f"http://testserver.local{page}"})
    assert str(r.url).endswith(page) and "type the client&#39;s name (alice-pc) to confirm" in r.text
    r = post_form(as_alice, page, page, {"confirm": "alice-pc"})
    assert r.status_code == 200 and "Client alice-pc and its backup history are deleted." in r.text
    assert as_alice.get(f"/clients/{cid}").status_code == 404
    api = client(as_alice.app)
    assert api.get(f"{API}/agent/me", headers=alice.agent).status_code == 401


def test_admin_manages_users(as_root, browser_factory, root, ctx):
    r = post_form(as_root, "/users", "/users", {"name": "carol", "password": "carol-password"})
    assert r.status_code == 200 and "User carol created." in r.text
    html = main_html(r)
    assert 'data-user="carol"' in html and 'data-user="root"' in html
    assert "keep every version" in html  # the default retention policy, in words
    carol_id = user_id(ctx, "carol")
    r = post_form(as_root, "/users", f"/users/{carol_id}/password", {"password": "new-carol-password"})
    assert "Password of carol changed" in r.text
    carol = browser_factory()
    assert login(carol, "carol", "carol-password").status_code == 401
    assert login(carol, "carol", "new-carol-password").status_code == 200
    assert carol.get("/users").status_code == 403
    r = post_form(as_root, "/users", f"/users/{carol_id}/admin", {"is_admin": "1"})
    assert "carol is now an admin" in r.text
    assert carol.get("/users").status_code == 200  # rights apply at once, same session
    r = post_form(as_root, "/users", f"/users/{root.user_id}/admin", {"is_admin": "0"})
    assert "root is no longer an admin" in r.text
    r = post_form(carol, "/users", f"/users/{carol_id}/admin", {"is_admin": "0"}, headers={"referer": "http://testserver.local/users"})
    assert "is the last admin" in r.text


def test_deleting_a_user_explains_and_removes_all_their_backups(as_root, alice, ctx):
    page = f"/users/{alice.user_id}/delete"
    html = main_html(as_root.get(page))
    assert "all their backups" in html and "1 client(s)" in html and "cannot be undone" in html
    assert any(k.startswith(f"packs/{alice.user_id}/") for k in ctx.store.list("packs/"))
    r = post_form(as_root, page, page, {"confirm": "alice"})
    assert r.status_code == 200 and "User alice, their clients and all their backups are deleted." in r.text
    assert 'data-user="alice"' not in r.text
    assert not any(k.startswith(f"packs/{alice.user_id}/") for k in ctx.store.list("packs/"))
    assert not ctx.store.exists(f"keys/{alice.user_id}")
    assert as_root.get(f"/clients/{alice.client_id}").status_code == 404
    api = client(as_root.app)
    assert api.get(f"{API}/agent/me", headers=alice.agent).status_code == 401
    r = post_form(as_root, "/users", f"/users/{user_id(ctx, 'root')}/delete", {"confirm": "root"})
    assert r.status_code == 409 and "cannot delete your own account" in r.text


def user_id(ctx, name: str) -> int:
    return accounts.admin_principal(ctx, name).user_id


def test_changing_your_own_password(as_alice, browser_factory, alice):
    r = post_form(as_alice, "/account", "/account/password", {"current": "wrong", "password": "brand-new-pw", "confirm": "brand-new-pw"},
                  headers={"referer": "http://testserver.local/account"})
    assert "the current password is wrong" in r.text
    other = browser_factory()
    login(other, "alice", alice.password)
    r = post_form(as_alice, "/account", "/account/password", {"current": alice.password, "password": "brand-new-pw", "confirm": "brand-new-pw"})
    assert "Password changed" in r.text
    assert as_alice.get("/").status_code == 200  # this session stays
    assert str(other.get("/").url).startswith("http://testserver.local/login")  # the other one ends


# --- retention and maintenance ------------------------------------------------------------------------------------


def test_retention_policy_per_user_and_override_per_client(as_root, alice, ctx):
    from bkup.server import policies

    page = "/users"
    r = post_form(as_root, page, f"/users/{alice.user_id}/policy", {"keep_versions": "5", "keep_days": " 30 ", "keep_daily": ""})
    assert r.status_code == 200 and "Retention policy of alice saved." in r.text
    row = main_html(r).split('data-user="alice"', 1)[1].split("</tr>", 1)[0]
    assert "the 5 newest versions of each path" in row and "last 30 days" in row
    root = accounts.admin_principal(ctx, "root")
    assert policies.get_user_policy(ctx, root, alice.user_id).to_dict() == {"keep_versions": 5, "keep_days": 30}
    assert f'id="pol-{alice.user_id}-keep_versions" name="keep_versions" value="5"' in r.text
    referer = {"referer": "http://testserver.local/users"}
    r = post_form(as_root, page, f"/users/{alice.user_id}/policy", {"keep_versions": "-1"}, headers=referer)
    assert "keep_versions" in r.text and "must not be negative" in r.text
    r = post_form(as_root, page, f"/users/{alice.user_id}/policy", {"keep_days": "a week"}, headers=referer)
    assert "keep days: &#39;a week&#39; is not a whole number" in r.text

    client_page = f"/clients/{alice.client_id}"
    r = post_form(as_root, client_page, f"{client_page}/policy", {"keep_daily": "7"})
    assert "Retention override saved." in r.text and "keep_daily = 7" in r.text
    assert policies.get_client_policy(ctx, root, alice.client_id).to_dict() == {"keep_daily": 7}
    r = post_form(as_root, client_page, f"{client_page}/policy", {})
    assert "No override now." in r.text


def test_maintenance_jobs_run_in_the_background_and_report(as_root, as_alice, alice):
    import time

    for action, expect in (("check", "no problems"), ("gc", "deleted 0 chunk(s)"), ("prune", "removed 0 version(s)")):
        r = post_form(as_root, "/server", f"/server/{action}")
        assert r.status_code == 200 and "started" in r.text, action
        deadline = time.monotonic() + 20
        while True:
            html = main_html(as_root.get("/server"))
            row = html.split(f'data-job="{action}"', 1)[1].split("</tr>", 1)[0]
            if 'data-state="running"' not in html.split(f'data-job="{action}"', 1)[1][:40] or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert row.startswith(' data-state="ok"'), row
        assert expect in row and "by root" in row
    assert post_form(as_alice, "/", "/server/gc").status_code == 403
    assert post_form(as_root, "/server", "/server/format-disk").status_code == 400


def test_the_pages_on_postgresql(pg_url, tmp_path, migrated_catalog):
    """The read models' SQL (sums, date buckets, EXISTS for a run's changes) on PostgreSQL too."""
    from web_kit import open_world

    with open_world(tmp_path, migrated_catalog, database_url=pg_url) as w:
        alice, root = w.user("alice"), w.user("root", admin=True)
        web = client(w.app)
        assert login(web, "root", root.password).status_code == 200
        html = main_html(web.get("/"))
        assert 'data-client="alice-pc"' in html and "<svg" in html and "706.7 KiB" in html
        html = main_html(web.get(f"/clients/{alice.client_id}/runs/2"))
        assert "c.txt" in html.split('id="added"')[1] and "b.txt" in html.split('id="deleted"')[1]
        assert web.get(f"/clients/{alice.client_id}/download?path=/home/alice/docs/a.txt&run=1").content == alice.files[("/home/alice/docs/a.txt", 1)]
        with tarfile.open(fileobj=io.BytesIO(web.get(f"/clients/{alice.client_id}/tar?path=/home/alice").content)) as tar:
            assert "alice/docs/sub/big.bin" in tar.getnames()
        assert 'data-user="alice"' in web.get("/users").text and "sqlite" not in main_html(web.get("/server"))
        r = post_form(web, f"/users/{alice.user_id}/delete", f"/users/{alice.user_id}/delete", {"confirm": "alice"})
        assert "all their backups are deleted" in r.text
