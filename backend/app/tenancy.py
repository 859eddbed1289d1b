"""The tenant of the request being served.

With API keys on, each key is a tenant (``app.api.middleware.ApiKeys`` sets it per request);
without keys every request is the local tenant. A context variable carries it to everything
the request runs, worker threads included, so per-tenant data (the archive) is chosen where
it is used and cannot be forgotten by a route.
"""

from __future__ import annotations

from contextvars import ContextVar

#: Tenant of every request when API keys are off (local use).
LOCAL_TENANT = "local"

current_tenant: ContextVar[str] = ContextVar("tenant", default=LOCAL_TENANT)
