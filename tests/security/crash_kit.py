"""Crash consistency: `bkup serve` killed with SIGKILL at random points of ingest, commit, prune and GC, then checked.

Used by tests/security/test_security_crash.py (short) and bench/crash.py (long).

A round: start the server on the same catalog and store, check that what
was acknowledged before the last kill is there and reads back (BLAKE3 of
every chunk, sizes, the current bytes of every path), drive an agent's
backups against it for a random time while prune (after each run) and GC
(every second, short grace) run inside it, then SIGKILL it mid-flight (one
round in four waits for a given request to be on its way: commits and
finishes are too short to be hit by chance every time). With
the server dead, `server.check.check` must find no problem (packs nobody
references are fine; a referenced chunk that is missing is not).

Restarting a real `python -m bkup serve` costs ~3 s (interpreter, imports,
building the app), too slow for 50 kills in CI: there the server process is
forked from the test process with the app already built (`Server` modes),
and killed the same way. bench/crash.py runs real `bkup serve` processes.
"""

from __future__ import annotations

import base64
import io
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx

API = "/api/v1"
PATHS = [f"/data/f{i:02d}" for i in range(10)]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env(folder: Path, **extra: str) -> dict[str, str]:
    env = {
        "BKUP_DATA_DIR": str(folder / "data"),
        "BKUP_CONFIG_DIR": str(folder / "config"),
        "BKUP_MASTER_KEY": base64.b64encode(os.urandom(32)).decode(),
        "BKUP_GC_INTERVAL": "1",
        "BKUP_GC_GRACE": "2",
        "BKUP_GC_REPACK_THRESHOLD": "10",
        "BKUP_LOG_LEVEL": "warning",
    }
    env.update(extra)
    return env


def _settings(env: dict[str, str]):
    from bkup.settings import Settings

    return Settings(
        data_dir=env["BKUP_DATA_DIR"], config_dir=env["BKUP_CONFIG_DIR"], master_key=env["BKUP_MASTER_KEY"],
        storage_url=env.get("BKUP_STORAGE_URL", ""), s3_endpoint_url=env.get("BKUP_S3_ENDPOINT_URL", ""), gc_interval=0,
    )


class Server:
    """One server process on `env`'s catalog and store; `mode` says how it is started.

    - "app": forked from this process with the app already built (`create_app` on a
      context opened here but never used here), then `uvicorn.run` in the child:
      ~0.3 s per restart. The CI default.
    - "cli": forked, then the `bkup serve` typer command runs in the child (~1.5 s).
    - "exec": `python -m bkup serve` as a new process (~3 s): the long variant's choice.
    """

    def __init__(self, env: dict[str, str], log: Path, *, mode: str = "app") -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        args = ["serve", "--port", str(self.port)]
        if mode == "exec":
            full = {k: v for k, v in os.environ.items() if not k.startswith("BKUP_")} | env
            with open(log, "ab") as out:
                self.pid = subprocess.Popen([sys.executable, "-m", "bkup", *args], env=full, stdout=out, stderr=out).pid
        elif mode == "cli":
            self.pid = _fork(env, log, lambda: _run_cli(args))
        else:
            app = _prebuilt_app(env)
            self.pid = _fork(env, log, lambda: _run_app(app, self.port))
        self._wait_up()

    def _wait_up(self) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            done, status = os.waitpid(self.pid, os.WNOHANG)
            if done:
                raise AssertionError(f"bkup serve exited ({status}): {self.log.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.01)
        raise AssertionError("bkup serve did not come up")

    def kill(self) -> None:
        os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)

    def stop(self) -> None:
        os.kill(self.pid, signal.SIGTERM)
        for _ in range(200):
            if os.waitpid(self.pid, os.WNOHANG)[0]:
                return
            time.sleep(0.05)
        self.kill()


_APPS: dict[str, object] = {}


def _prebuilt_app(env: dict[str, str]):
    """The app `bkup serve` would build for `env`, built once; each forked child gets an untouched copy."""
    key = env["BKUP_DATA_DIR"]
    if key not in _APPS:
        from bkup.server.app import create_app
        from bkup.server.context import open_context

        settings = _settings(env).replace(gc_interval=int(env["BKUP_GC_INTERVAL"]), gc_grace=int(env["BKUP_GC_GRACE"]),
                                          gc_repack_threshold=int(env["BKUP_GC_REPACK_THRESHOLD"]), log_level="warning")
        ctx = open_context(settings)
        ctx.catalog.dispose()  # no pooled connection may cross the fork
        _APPS[key] = create_app(settings, context=ctx)
    return _APPS[key]


def _run_app(app, port: int) -> None:
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=port, log_config=None, access_log=False, log_level="warning")


def _run_cli(args: list[str]) -> None:
    from bkup.cli.main import main

    sys.argv = ["bkup", *args]
    main()


def _fork(env: dict[str, str], log: Path, run) -> int:
    # Imported before the fork, so the child starts warm.
    import uvicorn.lifespan.on  # noqa: F401
    import uvicorn.loops.auto  # noqa: F401
    import uvicorn.main  # noqa: F401
    import uvicorn.protocols.http.auto  # noqa: F401
    import uvicorn.protocols.websockets.auto  # noqa: F401

    import bkup.cli.main  # noqa: F401
    import bkup.cli.serve  # noqa: F401
    import bkup.server.app  # noqa: F401

    pid = os.fork()
    if pid:
        return pid
    try:  # the child: never returns into the test process
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        for k in [k for k in os.environ if k.startswith("BKUP_")]:
            del os.environ[k]
        os.environ.update(env)
        run()
        os._exit(0)
    except SystemExit as e:
        os._exit(e.code if isinstance(e.code, int) else 1)
    except BaseException:
        import traceback

        traceback.print_exc()
        os._exit(1)


# --- the agent side --------------------------------------------------------------------------------


def _chunks(data: bytes) -> list[bytes]:
    from bkup.core.chunker import iter_chunks

    return list(iter_chunks(io.BytesIO(data)))


class Killed(Exception):
    """The server went away mid-request."""


@dataclass
class Model:
    """What the agent was told: per path, the acknowledged bytes (None: deleted), and a request whose answer never came."""

    acked: dict[str, bytes | None] = field(default_factory=dict)
    pending: dict[str, bytes | None] = field(default_factory=dict)
    runs_ok: int = 0
    dangling: int | None = None  # the run a killed server never heard finish


@dataclass
class Figures:
    kills: int = 0
    phases: Counter = field(default_factory=Counter)  # what the agent was waiting for when the server died
    gc_runs: int = 0  # collections the killed servers completed (their /metrics just before the kill)
    gc_chunks_deleted: int = 0
    gc_packs_deleted: int = 0
    gc_packs_rewritten: int = 0
    runs_ok: int = 0
    check_problems: int = 0
    lost_versions: int = 0
    bad_bytes: int = 0
    chunks_verified: int = 0
    next_runs_ok: int = 0


class Agent:
    def __init__(self, url: str, agent_token: str, model: Model, rnd: random.Random) -> None:
        self.http = httpx.Client(base_url=url + API, headers={"Authorization": f"Bearer {agent_token}"}, timeout=30)
        self.model = model
        self.rnd = rnd
        self.phase = "idle"
        self.stop = threading.Event()

    def _post(self, phase: str, path: str, **kw) -> httpx.Response:
        self.phase = phase
        try:
            r = self.http.post(path, **kw)
        except httpx.TransportError as e:
            raise Killed(str(e)) from None
        return r

    def upload(self, pieces: dict[str, bytes]) -> None:
        from bkup.core.frames import encode_chunk, end_marker, stream_header

        ids = list(pieces)
        missing = self._post("lookup", "/chunks/missing", json={"ids": ids}).json()["missing"]
        if missing:
            body = stream_header() + b"".join(encode_chunk(pieces[c], chunk_id=c).to_bytes() for c in missing) + end_marker(len(missing))
            r = self._post("ingest", "/chunks", content=body)
            assert r.status_code == 200, r.text

    def finish_dangling(self) -> None:
        """Like the agent service: the run a killed server left running is finished as failed, so it stops shielding from GC."""
        if self.model.dangling is not None:
            r = self._post("finish dangling", f"/runs/{self.model.dangling}/finish",
                           json={"status": "failed", "stats": {}, "error": "the agent lost the server during the run"})
            assert r.status_code in (200, 409), r.text
            self.model.dangling = None

    def one_run(self) -> None:
        from bkup.core.hashing import chunk_id

        self.finish_dangling()
        r = self._post("start", "/runs", json={"trigger": "manual"})
        assert r.status_code == 201, r.text
        run = self.model.dangling = r.json()["id"]
        change = self.rnd.sample(PATHS, self.rnd.randint(1, 4))
        new: dict[str, bytes | None] = {}
        for p in change:
            if self.model.acked.get(p) is not None and self.rnd.random() < 0.15:
                new[p] = None
            else:
                new[p] = self.rnd.randbytes(self.rnd.choice([700, 5000, 60_000, 300_000, 600_000]))
        entries, pieces = [{"path": "/data", "kind": "dir", "mode": 0o755}], {}
        for p, data in new.items():
            if data is None:
                continue
            cs = _chunks(data)
            ids = [chunk_id(c) for c in cs]
            pieces.update(zip(ids, cs))
            entries.append({"path": p, "kind": "file", "size": len(data), "mode": 0o644, "chunks": ids})
        self.upload(pieces)
        files = {p: d for p, d in new.items() if d is not None}
        for attempt in range(3):
            self.model.pending = dict(files)
            r = self._post("commit", f"/runs/{run}/versions", json={"entries": entries})
            if r.status_code == 409:  # GC took chunks between upload and commit (past the grace): send them again
                self.upload({c: pieces[c] for c in r.json()["extra"]["missing"]})
                continue
            assert r.status_code == 200, r.text
            break
        self.model.acked.update(files)
        self.model.pending = {}
        gone = [p for p, d in new.items() if d is None]
        if gone:
            self.model.pending = {p: None for p in gone}
            r = self._post("delete", f"/runs/{run}/deletions", json={"paths": gone})
            assert r.status_code == 200, r.text
            self.model.acked.update(self.model.pending)
            self.model.pending = {}
        r = self._post("finish+prune", f"/runs/{run}/finish", json={"status": "ok", "stats": {}})
        assert r.status_code == 200, r.text
        self.model.dangling = None
        self.model.runs_ok += 1
        self.phase = "between runs (GC)"

    def loop(self) -> None:
        try:
            while not self.stop.is_set():
                self.one_run()
        except Killed:
            pass


def scrape_gc(url: str, figures: Figures) -> None:
    try:
        text = httpx.get(url + "/metrics", timeout=2).text
    except httpx.HTTPError:
        return
    names = {"bkup_gc_runs_total": "gc_runs", "bkup_gc_deleted_chunks_total": "gc_chunks_deleted",
             "bkup_gc_deleted_packs_total": "gc_packs_deleted", "bkup_gc_rewritten_packs_total": "gc_packs_rewritten"}
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in names:
            setattr(figures, names[name], getattr(figures, names[name]) + int(float(line.rsplit(" ", 1)[1])))


# --- checks after a crash --------------------------------------------------------------------------


def check_storage(env: dict[str, str]) -> list[str]:
    """server.check with the server dead: the problems it finds (none expected)."""
    from bkup.server.check import check
    from bkup.server.context import open_context

    ctx = open_context(_settings(env))
    try:
        report = check(ctx)
        return [f"{p.kind}: {p.detail}" for p in report.problems]
    finally:
        ctx.close()


def verify(url: str, token: str, client_id: int, model: Model, figures: Figures) -> None:
    """Every acknowledged path holds its bytes (or a pending write's); every listed version of the last runs reads back intact."""
    from bkup.core.frames import FrameParser, decode_frame

    http = httpx.Client(base_url=url + API, headers={"Authorization": f"Bearer {token}"}, timeout=60)

    def read(ids: list[str]) -> dict[str, bytes]:
        r = http.post("/chunks/read", json={"client_id": client_id, "ids": ids})
        assert r.status_code == 200, r.text
        parser = FrameParser()
        frames = parser.feed(r.content)
        parser.close()
        out = {f.id: decode_frame(f) for f in frames}  # BLAKE3 of each chunk checked here
        figures.chunks_verified += len(out)
        return out

    def listing(run: int | None = None) -> dict[str, dict]:
        q = {"path": "/data", "chunks": "true", "limit": 1000, **({"run": run} if run else {})}
        r = http.get(f"/clients/{client_id}/files", params=q)
        assert r.status_code == 200, r.text
        return {e["path"]: e for e in r.json()["entries"] if e["kind"] == "file"}

    now = listing()
    for path in PATHS:
        want = model.acked.get(path)
        entry = now.get(path)
        data = None
        if entry is not None:
            got = read(entry["chunks"]) if entry["chunks"] else {}
            data = b"".join(got[c] for c in entry["chunks"])
        ok = data == want or (path in model.pending and data == model.pending[path])
        if not ok:
            if data is None or want is None:
                figures.lost_versions += 1
            else:
                figures.bad_bytes += 1
        model.acked[path] = data  # the server's answer settles a pending write
    model.pending = {}
    runs = http.get(f"/clients/{client_id}/runs", params={"limit": 3}).json()
    for run in runs:
        for entry in listing(run["seq"]).values():
            got = read(entry["chunks"]) if entry["chunks"] else {}
            if sum(len(got[c]) for c in entry["chunks"]) != entry["size"]:
                figures.bad_bytes += 1


@dataclass
class Setup:
    env: dict[str, str]
    token: str
    client_id: int
    agent_token: str


def setup(folder: Path, **env_extra: str) -> Setup:
    """A catalog with user alice (keep 2 versions per path) and her client; no server running."""
    from bkup.server import accounts, policies
    from bkup.server.context import open_context
    from bkup.server.principal import Principal
    from bkup.server.security import new_token

    env = server_env(folder, **env_extra)
    ctx = open_context(_settings(env))
    try:
        user = accounts.create_user(ctx, "alice", "alice-password-1")
        me = Principal(user_id=user.id, user_name="alice", is_admin=False)
        policies.set_user_policy(ctx, me, user.id, {"keep_versions": 2})
        created = accounts.create_client(ctx, me, "laptop")
        from bkup.catalog.models import Token
        from bkup.server.security import hash_token

        token = new_token("api")
        with ctx.catalog.session() as s:
            s.add(Token(user_id=user.id, kind="api", token_hash=hash_token(token), created_at=accounts.now()))
            s.commit()
    finally:
        ctx.close()
    return Setup(env, token, created.id, created.token)


AIMED = ("commit", "finish+prune", "delete", "ingest")  # the requests some kills wait for


def wait_for_phase(agent: Agent, phase: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while agent.phase != phase and time.monotonic() < deadline:
        time.sleep(0.0005)


def crash_rounds(folder: Path, rounds: int, *, seed: int = 0, max_delay: float = 1.0, mode: str = "app",
                 progress=None) -> Figures:
    """`rounds` kills of a busy server; the figures of what survived."""
    rnd = random.Random(seed)
    st = setup(folder)
    model, figures = Model(), Figures()
    log = folder / "serve.log"
    for i in range(rounds):
        server = Server(st.env, log, mode=mode)
        verify(server.url, st.token, st.client_id, model, figures)
        agent = Agent(server.url, st.agent_token, model, rnd)
        worker = threading.Thread(target=agent.loop, daemon=True)
        worker.start()
        # Mostly short lives (kills inside ingest and commit); every fourth one long enough for GC (every 1 s) to run;
        # every fourth, shifted by one, killed just as the agent sends a given request (short ones are rarely hit by chance).
        if i % 4 == 1:
            wait_for_phase(agent, AIMED[(i // 4) % len(AIMED)], timeout=1.0 + max_delay)
            time.sleep(rnd.uniform(0.0, 0.002))  # no GC in so short a life: nothing to scrape
        else:
            time.sleep(rnd.uniform(1.0, 1.0 + max_delay) if i % 4 == 3 else rnd.uniform(0.05, max_delay))
            scrape_gc(server.url, figures)
        phase = agent.phase
        server.kill()
        agent.stop.set()
        worker.join(30)
        assert not worker.is_alive(), "the agent did not notice the kill"
        figures.kills += 1
        figures.phases[phase] += 1
        problems = check_storage(st.env)
        figures.check_problems += len(problems)
        assert not problems, f"round {i}: check after the kill found {problems}"
        if progress:
            progress(i, figures)
    # The last restart: verify, then one complete run must go through.
    server = Server(st.env, log, mode=mode)
    try:
        verify(server.url, st.token, st.client_id, model, figures)
        Agent(server.url, st.agent_token, model, rnd).one_run()
        figures.next_runs_ok += 1
        verify(server.url, st.token, st.client_id, model, figures)
    finally:
        server.stop()
    figures.runs_ok = model.runs_ok
    assert not check_storage(st.env)
    return figures


# --- the agent killed mid-run -------------------------------------------------------------------------


def agent_cmd(url: str, token: str, src: Path) -> list[str]:
    return [sys.executable, "-m", "bkup", "agent", "--server", url, "--token", token, "--path", str(src), "--once", "--json"]


def agent_env(folder: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BKUP_")}
    env.update(BKUP_STATE_DIR=str(folder / "agent-state"), BKUP_CONFIG_DIR=str(folder / "agent-config"), PYTHONUNBUFFERED="1")
    return env


def latest_run_status(url: str, token: str, client_id: int) -> str | None:
    runs = httpx.get(f"{url}{API}/clients/{client_id}/runs", params={"limit": 1},
                     headers={"Authorization": f"Bearer {token}"}).json()
    return runs[0]["status"] if runs else None


def wait_for_running_run(url: str, token: str, client_id: int, proc: subprocess.Popen, timeout: float = 60) -> bool:
    """True once the client has a running run (the agent is mid-run); False if the agent finished first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if latest_run_status(url, token, client_id) == "running":
            return True
        time.sleep(0.05)
    return False


def server_tree(url: str, token: str, client_id: int, root: Path) -> dict[str, bytes]:
    """Every file under `root` as the server has it now, read back through /chunks/read (BLAKE3 checked)."""
    from bkup.core.frames import FrameParser, decode_frame

    http = httpx.Client(base_url=url + API, headers={"Authorization": f"Bearer {token}"}, timeout=60)
    out: dict[str, bytes] = {}
    after = None
    while True:
        r = http.get(f"/clients/{client_id}/files", params={"path": str(root), "chunks": "true", **({"after": after} if after else {})})
        assert r.status_code == 200, r.text
        page = r.json()
        for e in page["entries"]:
            if e["kind"] != "file":
                continue
            data = b""
            if e["chunks"]:
                rr = http.post("/chunks/read", json={"client_id": client_id, "ids": e["chunks"]})
                assert rr.status_code == 200, rr.text
                parser = FrameParser()
                got = {f.id: decode_frame(f) for f in parser.feed(rr.content)}
                parser.close()
                data = b"".join(got[c] for c in e["chunks"])
            out[e["path"]] = data
        after = page.get("next_after")
        if not after:
            return out


def disk_tree(root: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in root.rglob("*") if p.is_file() and not p.is_symlink()}
