"""HTTP entry points: thin routes that parse, authorize and call a use case."""

from .routes import router

__all__ = ["router"]
