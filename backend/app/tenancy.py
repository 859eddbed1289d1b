"""The tenant of the request being served.

With API keys on, each key is a tenant (``app.api.middleware.ApiKeys`` sets it per request);
without keys every request is the local tenant. A context variable carries it to everything
the request runs, worker threads included, so per-tenant data (the archive) is chosen where
it is used and cannot be forgotten by a route.
"""

from __future__ import annotations

from contextvars import ContextVar

#: Tenant of every request when API keys are off (local use), of the probes when they are on,
#: and of the CLI's archive commands by default: the archive's own collection and per-address
#: rate limits.
LOCAL_TENANT = "local"

#: Names no API key's tenant may have (compared case-insensitively): a key named so would share
#: the local tenant's archive and be limited per address instead of per key.
RESERVED_TENANTS = frozenset({LOCAL_TENANT})


def is_reserved(tenant: str) -> bool:
    """Whether ``tenant`` is one of :data:`RESERVED_TENANTS`, in any case."""
    return tenant.lower() in RESERVED_TENANTS

current_tenant: ContextVar[str] = ContextVar("tenant", default=LOCAL_TENANT)
