"""HTTP entry points (thin: translate the request into a use case call)."""

from .routes import router

__all__ = ["router"]
