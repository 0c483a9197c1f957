"""The catalog: what every client had, when, and where its bytes live (SQLite by default, PostgreSQL by URL).

Terms (DESIGN.md §2):

- **version**: one period of one path of one client, open from run
  `valid_from` until run `valid_to` (exclusive; NULL while current).
  "As of run R" is `valid_from <= R AND (valid_to IS NULL OR valid_to > R)`.
- **run**: one backup pass of a client; `seq` counts 1, 2, 3 … per client.
- **content**: the ordered chunk ids of a file body, keyed by their hash.
- **chunk**: where one chunk of one user sits (pack, offset, length).
- **pack**: one object in storage holding chunk blobs.

Modules: `db` (the `Catalog` handle: engine, sessions, migrations),
`models` (the tables), `queries` (the set-based queries the server runs),
`migrations/` (alembic revisions, applied by `Catalog.upgrade()`).
"""
