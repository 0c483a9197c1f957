"""The file browser: a client's tree as of a run or a date, a path's history, downloads of a file version or a directory as tar."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, Request, get
from litestar.params import FromPath, QueryParameter
from litestar.response import Stream, Template

from bkup.core import paths
from bkup.core.frames import coalesce
from bkup.server import accounts, browse, runs
from bkup.web import downloads, render
from bkup.web.pages.common import Ctx, Me

PathQ = Annotated[str, QueryParameter()]
RunQ = Annotated[int | None, QueryParameter(ge=1)]
AtQ = Annotated[str | None, QueryParameter()]
RUN_CHOICES = 200


def crumbs(path: str) -> list[tuple[str, str]]:
    """(label, path) for each directory from the root down to `path`."""
    out = [("/", "/")]
    if path == paths.ROOT:
        return out
    parts = path.strip("/").split("/")
    for i, name in enumerate(parts):
        out.append((name, "/" + "/".join(parts[: i + 1])))
    return out


def _stream(d: downloads.Download) -> Stream:
    headers = {"Content-Disposition": downloads.content_disposition(d.filename), "Cache-Control": "no-store",
               "X-Content-Type-Options": "nosniff"}
    if d.size is not None:
        headers["Content-Length"] = str(d.size)
    return Stream(coalesce(d.body), media_type=d.media_type, headers=headers)  # one thread hop per piece


class BrowserPages(Controller):
    path = "/clients/{client_id:int}"

    @get("/browse", sync_to_thread=True)
    def browse(self, request: Request, ctx: Ctx, me: Me, client_id: FromPath[int], path: PathQ = "/", run: RunQ = None, at: AtQ = None) -> Template:
        info = accounts.get_client(ctx, me, client_id)
        if run is not None and at:
            at = None  # the run picker wins over the date picker
        tree = browse.tree(ctx, me, client_id, path, run, at)
        entries = sorted(tree.entries, key=lambda v: (v.kind != "dir", v.name))
        return render.page(
            request, "browse.html", client=info, tree=tree, entries=entries, crumbs=crumbs(tree.path),
            runs=runs.list_runs(ctx, me, client_id, RUN_CHOICES), at=at or "",
            parent=paths.parent_of(tree.path) if tree.path != paths.ROOT else None,
        )

    @get("/history", sync_to_thread=True)
    def history(self, request: Request, ctx: Ctx, me: Me, client_id: FromPath[int], path: PathQ = "/") -> Template:
        info = accounts.get_client(ctx, me, client_id)
        hist = browse.history(ctx, me, client_id, path)
        return render.page(request, "history.html", client=info, history=hist, crumbs=crumbs(hist.path))

    @get("/download", sync_to_thread=True)
    def download(self, ctx: Ctx, me: Me, client_id: FromPath[int], path: PathQ, run: RunQ = None) -> Stream:
        return _stream(downloads.file_download(ctx, me, client_id, path, run))

    @get("/tar", sync_to_thread=True)
    def tar(self, ctx: Ctx, me: Me, client_id: FromPath[int], path: PathQ = "/", run: RunQ = None) -> Stream:
        info = accounts.get_client(ctx, me, client_id)
        return _stream(downloads.tar_download(ctx, me, client_id, info.name, path, run))
