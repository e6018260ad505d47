"""The checkpoint through torch.compile (inductor)."""

from __future__ import annotations

import torch

from digits.bench.backends._base import CHECKPOINT_PRECISIONS, Backend, register_backend
from digits.precision import Tf32


def compiled(module: torch.nn.Module, mode: str | None = None) -> tuple[torch.nn.Module, dict]:
    """``(torch.compile(module), settings)``, failing loudly instead of falling back to eager."""
    import torch._dynamo.config as dynamo

    # Every model is an nn.Sequential, so all of them share one code object and one
    # recompile budget (8): each model, batch size and accuracy chunk takes an entry,
    # and past the budget dynamo silently runs eager, which would be reported as
    # compile. Give the sweep room, and fail the cell rather than fall back.
    # (torch < 2.7 names them cache_size_limit and fail_on_cache_limit_hit.)
    limit, fail = (("recompile_limit", "fail_on_recompile_limit_hit") if hasattr(dynamo, "recompile_limit")
                   else ("cache_size_limit", "fail_on_cache_limit_hit"))
    setattr(dynamo, limit, max(getattr(dynamo, limit), 64))
    setattr(dynamo, fail, True)
    settings = {"torch_compile": f"inductor, mode={mode or 'default'}, dynamic=False",
                "recompile_limit": getattr(dynamo, limit), "fail_on_recompile_limit_hit": getattr(dynamo, fail)}
    if isinstance(module, Tf32):  # the TF32 switch stays outside the traced code, around each call
        return Tf32(torch.compile(module.inner, mode=mode, dynamic=False)), settings
    return torch.compile(module, mode=mode, dynamic=False), settings


@register_backend
class Compile(Backend):
    """``torch.compile`` (inductor) of the eager model. Not in the default sweep: compiling
    costs tens of seconds per model and batch size on a 2-core CPU."""

    name = "compile"
    default = False
    precisions = CHECKPOINT_PRECISIONS

    def _open(self, model, device, *, checkpoint, threads):
        self.module, self.settings = compiled(self._checkpoint_module(checkpoint, model))
