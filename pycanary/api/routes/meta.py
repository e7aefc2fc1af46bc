"""Who am I: the role of the presented token (a client checks its token with this)."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

from ..app import Viewer

router = APIRouter(tags=["meta"])


class WhoAmI(BaseModel):
    role: str
    token: str


@router.get("/whoami", response_model=WhoAmI, summary="The role of the presented token")
def whoami(who: Viewer) -> WhoAmI:
    return WhoAmI(role=who.role.name.lower(), token=who.name)
