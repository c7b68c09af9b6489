"""The user-facing error type, defined in models.errors so that every layer can raise it."""
from models.errors import UserError

__all__ = ["UserError"]
