"""``digits serve``: the exported models behind an HTTP API and a drawing page (see app.py)."""

from digits.serve.app import ServeConfig, create_app, load_models

__all__ = ["ServeConfig", "create_app", "load_models"]
