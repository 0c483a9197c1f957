"""The pure heart of bkup: formats, identifiers and policies, with no I/O beyond reading a file.

Vocabulary (used with these meanings across the code and the docs):

chunk
    A piece of a file body cut by content-defined chunking (FastCDC: at least
    256 KiB, about 1 MiB on average, at most 4 MiB; only a file's last chunk
    may be shorter, so a small file is one chunk). The unit of deduplication,
    upload and storage.

chunk id
    BLAKE3-256 of a chunk's plaintext: 32 bytes, written as 64 lowercase hex
    characters everywhere outside the binary formats.

content
    One file body as the ordered list of its chunk ids. Its **content id** is
    BLAKE3-256 of the concatenated raw 32-byte chunk ids, so equal files share
    one content. An empty file has no chunks and the content id ``blake3(b"")``.

frame
    One chunk on the wire between agent and server: chunk id, flags, raw
    length and data (zstd-compressed, or raw when compression does not pay).
    A frame stream is a magic, frames, and an end marker that counts them.

blob
    One chunk as stored inside a pack: a random nonce and the AES-256-GCM
    encryption of the frame's data, bound to the chunk id and flags.

pack
    A write-once storage object of one user: a header, blobs back to back, an
    encrypted index of the blobs and a fixed trailer. A pack can be read,
    verified and re-indexed without the catalog.

version
    One period of one path on one client during which its kind, metadata and
    content stayed the same, from the run that saw it first up to (excluding)
    the run that saw it change or vanish.

run
    One backup pass of one client, numbered per client 1, 2, 3 … (``seq``).

client
    A machine backed up by an agent; owned by one user.

user
    The owner of clients, and the scope of both deduplication and encryption:
    a user has one data key, and chunks are never shared between users.

Layout: ``chunker`` cuts, ``hashing`` names, ``frames`` carries chunks over
HTTP, ``pack`` stores them, ``paths`` keeps client paths safe and lossless.
docs/format.md specifies the byte formats.
"""
