"""The client side of bkup: what runs on a protected machine, and the client commands (ls, restore, login).

Layout: ``api`` is the typed HTTP client of the server (the only way out of
this package); ``scanner`` walks the monitored paths; ``state`` keeps the
local cache of what the server holds and the agent's identity; ``backup``
drives one run (chunk, ask what is missing, upload, commit, report
deletions); ``restore`` lists and restores a client's tree safely;
``credentials`` finds the server, token and client a command uses;
``progress`` reports to a terminal or a log. The service (``bkup agent``
without ``--once``, docs/agent.md) is ``service`` (the main loop) with
``startup``, ``runner``, ``config``, ``watcher``, ``commands``, ``signals``
(heartbeat, long-poll), ``logship``, ``setup_ui`` and ``status``. The agent
meets the server only in ``bkup.protocol``; it never imports server, web,
catalog or storage.
"""
