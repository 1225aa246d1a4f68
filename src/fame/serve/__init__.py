"""The detection service (``fame serve``): HTTP API, storage, dashboard, metrics, alerts.

Modules, in the order a request meets them: :mod:`~fame.serve.app` (routes, auth, errors),
:mod:`~fame.serve.ingest` (bodies to lines, limits), :mod:`~fame.serve.worker` (the one
thread that owns the detector, batching), :mod:`~fame.serve.runtime` (loading, reloads,
metrics, the storage writer), :mod:`~fame.serve.storage` (SQLite or PostgreSQL),
:mod:`~fame.serve.alerting` (webhooks) and :mod:`~fame.serve.dashboard` (the page).
:mod:`~fame.serve.server` runs it all under uvicorn.

Needs the ``serve`` extra: ``pip install 'fame[serve]'``.
"""

from __future__ import annotations
