"""Run and prune manifests in storage: what each run and each prune did to a client's versions (DESIGN.md §3 step 7).

`manifests/<client_id>/<run_seq>` records a finished (ok, partial, failed
or abandoned) run: the run itself and every version it opened (with its
chunk list) or closed. `manifests/<client_id>/prune-<time>-<rand>` records
versions a prune removed. Together with the packs they let
`bkup catalog rebuild` recreate the catalog from storage alone. The byte
format is `bkup.core.manifest`'s; docs/format.md §7 specifies the records.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import update

from bkup.catalog import history
from bkup.catalog.models import Client, Run, User
from bkup.catalog.queries import split_chunk_ids
from bkup.core.manifest import FORMAT_VERSION, ManifestEncoder, stream_manifest
from bkup.core.prune import ClientPrune
from bkup.server.context import ServerContext

log = logging.getLogger("bkup.server.manifests")

PREFIX = "manifests"
STAT_FIELDS = ("files_seen", "files_changed", "files_deleted", "dirs_seen", "bytes_scanned", "bytes_new", "bytes_uploaded", "errors")
SETTLE = timedelta(seconds=60)  # a run that finished this recently is still writing its own manifest


def manifest_key(client_id: int, name: str) -> str:
    return f"{PREFIX}/{client_id}/{name}"


def _iso(t: datetime | None) -> str | None:
    if t is None:
        return None
    return (t.replace(tzinfo=UTC) if t.tzinfo is None else t).isoformat()


def _who(client: Client, user: User) -> dict[str, Any]:
    return {
        "client": {"id": client.id, "name": client.name, "created_at": _iso(client.created_at),
                   "policy": client.policy, "config": client.config},
        "user": {"id": user.id, "name": user.name, "policy": user.policy},
    }


def _write(ctx: ServerContext, user_id: int, client_id: int, name: str, header: dict, records: Iterator[dict]) -> int:
    enc = ManifestEncoder(ctx.keys.user_key(user_id), user_id, client_id, name)
    with ctx.store.open_write(manifest_key(client_id, name)) as f:
        f.write(enc.begin())
        f.write(enc.add(header))
        for record in records:
            out = enc.add(record)
            if out:
                f.write(out)
        f.write(enc.finish())
    return enc.records - 1


def write_run_manifest(ctx: ServerContext, run_id: int) -> str:
    """Write the manifest of a finished run and note it on the run; returns its key."""
    with ctx.catalog.session() as s:
        run = s.get(Run, run_id)
        if run is None or run.status == "running":
            raise ValueError(f"run {run_id} is not finished")
        client = s.get(Client, run.client_id)
        user = s.get(User, client.user_id)
        header = {
            "format": FORMAT_VERSION, "type": "run", **_who(client, user), "written_at": _iso(datetime.now(UTC)),
            "run": {
                "seq": run.seq, "trigger": run.trigger, "status": run.status, "started_at": _iso(run.started_at),
                "finished_at": _iso(run.finished_at), "error": run.error,
                "stats": {f: getattr(run, f) or 0 for f in STAT_FIELDS},
            },
        }

        def records() -> Iterator[dict]:
            # Closes first: replaying them before the opens keeps one current version per path.
            for path, valid_from in history.closed_by(s, client.id, run.seq):
                yield {"op": "close", "path": path, "valid_from": valid_from}
            for v, blob in history.opened_by(s, client.id, user.id, run.seq):
                yield {
                    "op": "open", "path": v.path, "kind": v.kind, "size": v.size, "mtime_ns": v.mtime_ns,
                    "mode": v.mode, "uid": v.uid, "gid": v.gid, "content_id": v.content_id,
                    "link_target": v.link_target, "chunks": split_chunk_ids(blob) if blob is not None else None,
                }

        name = str(run.seq)
        _write(ctx, user.id, client.id, name, header, records())
        s.execute(update(Run).where(Run.id == run_id).values(manifest_at=datetime.now(UTC)))
        s.commit()
    return manifest_key(client.id, name)


def write_prune_manifest(ctx: ServerContext, cp: ClientPrune, now: datetime) -> str:
    """Record the versions a prune is about to remove from one client; returns the key."""
    with ctx.catalog.session() as s:
        client = s.get(Client, cp.client_id)
        user = s.get(User, cp.user_id)
        header = {"format": FORMAT_VERSION, "type": "prune", **_who(client, user), "time": _iso(now),
                  "policy": cp.policy.to_dict()}
    name = f"prune-{now.astimezone(UTC):%Y%m%dT%H%M%S%fZ}-{secrets.token_hex(3)}"
    records = ({"op": "remove", "path": r.path, "valid_from": r.valid_from, "valid_to": r.valid_to} for r in cp.removals)
    _write(ctx, cp.user_id, cp.client_id, name, header, records)
    return manifest_key(cp.client_id, name)


def after_finish(ctx: ServerContext, run_id: int, client_id: int, run_seq: int) -> None:
    """What a run's end sets off: its manifest, then prune of the paths it changed. Never raises."""
    try:
        write_run_manifest(ctx, run_id)
    except Exception:  # noqa: BLE001 - the sweep writes it later
        log.exception("could not write the manifest of run %s (client %s); the next sweep retries", run_seq, client_id)
    try:
        from bkup.server.prune import prune_after_run

        prune_after_run(ctx, client_id, run_seq)
    except Exception:  # noqa: BLE001 - a failed prune is retried by the next run or `bkup prune`
        log.exception("prune after run %s of client %s failed", run_seq, client_id)


@dataclass
class SweepReport:
    abandoned: int = 0
    written: int = 0
    failed: int = 0


def sweep_runs(ctx: ServerContext, now: datetime | None = None) -> SweepReport:
    """Mark silent running runs failed, and write every missing manifest of finished runs."""
    now = now or datetime.now(UTC)
    stale = ctx.settings.run_stale_after
    report = SweepReport()
    with ctx.catalog.session() as s:
        abandoned = history.abandon_runs(s, now - timedelta(seconds=stale), now, f"abandoned: no activity for {stale} s")
        s.commit()
    report.abandoned = len(abandoned)
    with ctx.catalog.session() as s:
        pending = sorted(set(abandoned) | set(history.runs_without_manifest(s, now - SETTLE)))
    for run_id in pending:
        try:
            write_run_manifest(ctx, run_id)
            report.written += 1
        except Exception:  # noqa: BLE001
            report.failed += 1
            log.exception("could not write the manifest of run id %s", run_id)
    return report


# --- reading ------------------------------------------------------------------------


def list_manifests(ctx: ServerContext) -> dict[int, list[str]]:
    """Manifest names by client id (run seqs as text, and prune-… names)."""
    found: dict[int, list[str]] = {}
    for key in ctx.store.list(PREFIX):
        parts = key.split("/")
        if len(parts) == 3 and parts[1].isdigit():
            found.setdefault(int(parts[1]), []).append(parts[2])
    return found


def read_manifest(ctx: ServerContext, client_id: int, name: str) -> Iterator[dict[str, Any]]:
    """The records of one manifest, header first (decrypted with its user's key), read a segment at a time."""
    key = manifest_key(client_id, name)
    size = ctx.store.size(key)
    return stream_manifest(ctx.keys.user_key, client_id, name, size, lambda start, n: ctx.store.get_range(key, start, n))
