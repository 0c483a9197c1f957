"""bkup's own error hierarchy; third-party errors are translated into these at the edge.

    BkupError                 anything bkup reports to a user (message + exit code)
    ├── UsageError            bad flags or arguments (exit 2)
    ├── ConfigError           settings missing or invalid
    ├── AuthError             wrong or missing password or token (401)
    │   └── Forbidden         authenticated, but not allowed (403)
    ├── NotFound              no such user, client, run, path, object
    ├── Conflict              name taken, target not empty, …
    ├── IntegrityError        bytes that do not match their id, damaged packs
    ├── StorageError          the object store failed (bkup.storage)
    └── ServerError           the server answered something unexpected (agent side)
"""

from __future__ import annotations


class BkupError(Exception):
    exit_code = 1


class UsageError(BkupError):
    exit_code = 2


class ConfigError(BkupError):
    pass


class AuthError(BkupError):
    pass


class Forbidden(AuthError):
    pass


class NotFound(BkupError):
    pass


class Conflict(BkupError):
    pass


class IntegrityError(BkupError):
    pass


class StorageError(BkupError):
    pass


class ServerError(BkupError):
    pass
