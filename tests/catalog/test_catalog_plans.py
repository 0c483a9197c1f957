"""Query plans on SQLite: the hot catalog queries use the index meant for them, however many rows there are."""

from __future__ import annotations

import pytest
from catalog_kit import World, catalog, db_url  # noqa: F401 - fixtures
from sqlalchemy import event

from bkup.catalog import history, queries


@pytest.fixture(params=["sqlite"])
def db_url(request, tmp_path) -> str:  # noqa: F811 - SQLite only: its planner is the one that needs hints
    return f"sqlite:///{tmp_path}/catalog/bkup.db"


def _plans(catalog, s, call) -> list[str]:  # noqa: F811
    seen: list[tuple[str, tuple]] = []

    def capture(conn, cursor, statement, parameters, context, executemany):
        seen.append((statement, parameters))

    event.listen(catalog.engine, "before_cursor_execute", capture)
    try:
        call()
    finally:
        event.remove(catalog.engine, "before_cursor_execute", capture)
    raw = s.connection().connection.dbapi_connection
    return [" / ".join(row[3] for row in raw.execute("EXPLAIN QUERY PLAN " + st, p)) for st, p in seen]


def test_commit_and_manifest_queries_use_their_indexes(catalog):  # noqa: F811
    w = World(catalog)
    user = w.user()
    client = w.client(user)
    seq = w.start(client)
    ids = w.chunks(user, [f"c{i}" for i in range(600)], raw_len=10)
    w.commit(client, user, seq, [w.file(f"/d/f{i}", [ids[i]], 10) for i in range(600)])
    paths = [f"/d/f{i}" for i in range(600)]
    with catalog.session() as s:
        # A long IN list once made SQLite scan every current version through (client_id, valid_to).
        for plan in _plans(catalog, s, lambda: queries._current_versions(s, client, paths)):
            assert "uq_versions_client_id_path_current" in plan, plan
        for plan in _plans(catalog, s, lambda: list(history.opened_by(s, client, user, seq))):
            assert "ix_versions_client_id_valid_from (client_id=? AND valid_from=?)" in plan, plan
        for plan in _plans(catalog, s, lambda: history.closed_by(s, client, seq)):
            assert "ix_versions_client_id_valid_to (client_id=? AND valid_to=?)" in plan, plan
