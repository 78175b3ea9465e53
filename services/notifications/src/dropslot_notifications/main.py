"""DropSlot notifications service: the app factory (`uvicorn dropslot_notifications.main:create_app --factory`)."""

from dropslot_kit.app import create_service_app
from fastapi import FastAPI

from .config import Settings


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    return create_service_app(settings, title="DropSlot notifications")
