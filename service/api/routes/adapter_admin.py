"""`GET /adapters` (public) and the `/admin/adapters` operations (bearer token)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter

from service.api.deps import AdminDep, OpsDep, ServiceDep
from service.api.error_mapping import documented
from service.api.protocol import AdapterList, AdapterSummary, LoadAdapterRequest, SetDefaultRequest
from service.lora.registry import AdapterRegistry, LoadedAdapter

router = APIRouter()
ERRORS = documented(400, 401, 403, 404, 409, 413, 503)


def _metrics(adapter: LoadedAdapter) -> dict[str, dict[str, float | None]]:
    """The adapter's own (lora_prompt) held-out numbers per eval set, from its manifest."""
    out = {}
    for eval_set, methods in adapter.manifest.metrics.items():
        own = methods.get("lora_prompt") if isinstance(methods, dict) else None
        if isinstance(own, dict):
            out[eval_set] = {k: v for k, v in own.items() if isinstance(v, (int, float)) or v is None}
    return out


def summary(registry: AdapterRegistry, adapter: LoadedAdapter) -> AdapterSummary:
    return AdapterSummary(
        name=adapter.name,
        version=adapter.version,
        base_model=adapter.manifest.base_model.name,
        temperature=adapter.temperature,
        template_version=adapter.manifest.template_version,
        metrics=_metrics(adapter),
        loaded_at=adapter.loaded_at,
        requests_served=adapter.requests_served,
        in_flight=adapter.in_flight,
        current=registry.is_current(adapter),
        default=registry.default_adapter() is adapter,
    )


def listing(registry: AdapterRegistry, *, admin: bool = False) -> AdapterList:
    """Public: refused adapters with a short reason; admin: with the full message."""
    default = registry.default_adapter()
    return AdapterList(
        default=default.spec if default else None,
        adapters=[summary(registry, a) for a in registry.list()],
        rejected=registry.rejected_details if admin else registry.rejected,
        previous_default=registry.previous_default,
    )


@router.get("/adapters", response_model=AdapterList, responses=documented(503))
async def list_adapters(service: ServiceDep) -> AdapterList:
    """Loaded uncertainty adapters, which is current per name, and the default."""
    return listing(service.registry)


@router.get("/admin/adapters", response_model=AdapterList, responses=ERRORS)
async def list_adapters_admin(ops: OpsDep, _: AdminDep) -> AdapterList:
    """As `GET /adapters`, with the full reason each refused adapter was refused."""
    return listing(ops.registry, admin=True)


# Load and unload run shielded: an admin client that disconnects midway cancels only its
# wait, never the operation, which finishes (or rolls back) and leaves no slot or copy behind.


@router.post("/admin/adapters", response_model=AdapterList, status_code=201, responses=ERRORS)
async def load_adapter(request: LoadAdapterRequest, ops: OpsDep, _: AdminDep) -> AdapterList:
    """Validate, load and warm up `<adapter_root>/<name>/<version>`; on failure nothing changes."""
    await asyncio.shield(ops.load(request.name, request.version, make_default=request.make_default))
    return listing(ops.registry, admin=True)


@router.put("/admin/adapters/default", response_model=AdapterList, responses=ERRORS)
async def set_default(request: SetDefaultRequest, ops: OpsDep, _: AdminDep) -> AdapterList:
    """Atomically switch what requests naming no adapter get."""
    await ops.set_default(request.adapter)
    return listing(ops.registry, admin=True)


@router.post("/admin/adapters/{name}/rollback", response_model=AdapterList, responses=ERRORS)
async def rollback_default(name: str, ops: OpsDep, _: AdminDep) -> AdapterList:
    """Return the default from `name`'s current version to the previous default."""
    await ops.rollback(name)
    return listing(ops.registry)


@router.delete("/admin/adapters/{name}/{version}", response_model=AdapterList, responses=ERRORS)
async def unload_adapter(name: str, version: str, ops: OpsDep, _: AdminDep) -> AdapterList:
    """Stop serving a version; requests already using it finish first."""
    await asyncio.shield(ops.unload(f"{name}@{version}"))
    return listing(ops.registry, admin=True)
