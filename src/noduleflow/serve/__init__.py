"""The HTTP server: `create_app(ServeSettings(run=...))` (what `noduleflow serve` runs on uvicorn); see docs/API.md."""

from noduleflow.serve.settings import ServeSettings

__all__ = ["ServeSettings", "create_app"]


def __getattr__(name: str):
    if name == "create_app":  # FastAPI is imported only by whoever builds the app
        from noduleflow.serve.app import create_app

        return create_app
    raise AttributeError(name)
