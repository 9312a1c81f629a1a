"""The FastAPI dependency that hands routes the service.

`async def` although it never awaits: FastAPI runs a plain `def` dependency in anyio's worker
threads, which would put a thread hop in front of every request and make probes wait whenever that
pool is busy.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.service import Service


async def get_service(request: Request) -> Service:
    return request.app.state.service


ServiceDep = Annotated[Service, Depends(get_service)]
