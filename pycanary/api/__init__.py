"""The admin HTTP API (`pycanary api`): a thin face over the service layer, like the CLI.

`create_app` builds the FastAPI application; routes live in `routes`, one module per resource;
every error leaves through the envelope in `errors`; who may do what is decided in `auth`.
"""

from .app import create_app

__all__ = ["create_app"]
