"""The checkpoint through torch.compile (inductor)."""

from __future__ import annotations

import torch

from digits.bench.backends._base import Backend, register_backend


@register_backend
class Compile(Backend):
    """``torch.compile`` (inductor) of the eager model. Not in the default sweep: compiling
    costs tens of seconds per model and batch size on a 2-core CPU."""

    name = "compile"
    default = False

    def _open(self, model, device, *, checkpoint, threads):
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
        self.module = torch.compile(self._checkpoint_module(checkpoint, model), dynamic=False)
        self.settings = {"torch_compile": "inductor, dynamic=False", "recompile_limit": getattr(dynamo, limit),
                         "fail_on_recompile_limit_hit": getattr(dynamo, fail)}
