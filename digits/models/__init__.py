"""Model registry. Adding a model is one file here plus its name in ``NAMES``.

``NAMES`` is the listing order (``list_models()``): simplest model first. It is known without
importing torch, so ``digits --help`` and a mistyped option answer at once (importing torch
takes 4-5 s on a slow core); the first use of anything else here imports the registry and
every model file, which registers it.
"""

import importlib

NAMES = ("mlp", "cnn", "lenet5")
_API = ("ModelInfo", "count_macs", "count_params", "create_model", "list_models", "model_info",
        "predict_proba", "register_model")
__all__ = ["NAMES", *_API]


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'digits.models' has no attribute {name!r}")
    registry = importlib.import_module("digits.models._registry")
    for model in NAMES:
        importlib.import_module(f"digits.models.{model}")  # importing registers the model
    globals().update({n: getattr(registry, n) for n in _API})  # found directly from now on
    return globals()[name]
