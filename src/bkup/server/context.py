"""The server's composition root: settings, catalog, object store and keys, opened once and shared.

API controllers, web pages and the CLI's admin commands all act through a
`ServerContext`, so they share one set of services and one behaviour.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bkup.catalog.db import Catalog
from bkup.server import metrics as _metrics
from bkup.server.alerts import AlertSender
from bkup.server.background import SerialWorker
from bkup.server.leader import Scheduler
from bkup.server.metrics import ServerMetrics
from bkup.server.ratelimit import LoginLimiter
from bkup.settings import Settings
from bkup.storage.keys import KeyStore, load_or_create_master_key, master_key_from_text
from bkup.storage.objects import ObjectStore, open_store
from bkup.storage.packs import PackReader


@dataclass
class ServerContext:
    settings: Settings
    catalog: Catalog
    store: ObjectStore
    keys: KeyStore
    packs: PackReader
    # Facts for the operator, printed once by `bkup serve`.
    notices: list[str] = field(default_factory=list)
    login_limiter: LoginLimiter = field(default_factory=LoginLimiter)
    # Operations (server.metrics, server.alerts, server.leader); set by open_context.
    metrics: ServerMetrics = field(default=None)  # type: ignore[assignment]
    alerts: AlertSender = field(default=None)  # type: ignore[assignment]
    scheduler: Scheduler = field(default=None)  # type: ignore[assignment]
    # What a run's end sets off, after `finish` has answered (server.background).
    after_run: SerialWorker = field(default_factory=SerialWorker)

    def __post_init__(self) -> None:
        self.metrics = self.metrics or _metrics.install(self)
        self.alerts = self.alerts or AlertSender(secret=self.settings.alert_secret, metrics=self.metrics)
        self.scheduler = self.scheduler or Scheduler(self)

    def close(self) -> None:
        self.scheduler.stop()
        self.after_run.close()  # finished runs' manifests and prunes still queued
        self.alerts.close()  # what is queued gets one last try (a CLI command's damage_found)
        self.catalog.dispose()


def open_context(
    settings: Settings,
    *,
    catalog: Catalog | None = None,
    store: ObjectStore | None = None,
    migrate: bool = True,
) -> ServerContext:
    notices: list[str] = []
    if settings.master_key:
        master = master_key_from_text(settings.master_key)
    else:
        path = settings.effective_master_key_file
        master, created = load_or_create_master_key(path)
        if created:
            notices.append(
                f"Generated the master key at {path}. Back it up: without it no backup can be read."
            )
    catalog = catalog or Catalog(settings.effective_database_url)
    if migrate:
        catalog.upgrade()
    store = store or open_store(settings.effective_storage_url, s3_endpoint_url=settings.s3_endpoint_url or None)
    keys = KeyStore(store, master)
    return ServerContext(
        settings=settings,
        catalog=catalog,
        store=store,
        keys=keys,
        packs=PackReader(store, keys.user_key),
        notices=notices,
    )
