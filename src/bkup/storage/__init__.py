"""bkup.storage: where the bytes live.

- `objects`: the `ObjectStore` port (put, open_write, get, get_range, size,
  exists, list, delete) with its adapters: a local folder and S3 through one
  fsspec code path, and a memory store for tests; `open_store(url)`.
- `keys`: the server master key and the per-user data keys it wraps
  (`keys/<user_id>`).
- `packs`: `PackWriter` streams sealed blobs into `packs/<user>/<xx>/<pack-id>`,
  `PackReader` reads blobs and indexes back with range requests. The byte
  format itself is `bkup.core.pack`'s.

Everything here is sync and blocking: the server calls it from worker threads.
"""
