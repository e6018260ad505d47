"""The one parity function: does a reloaded artifact compute what the eager model computes?

Used by ``digits export``, ``digits verify``, the bench backends' tests and the test suite.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn

MAX_ABS_DIFF = 1e-4  # pass criterion on logits
DYNAMIC_BATCHES = (1, 7, 64)  # plus the whole set in one batch


@dataclass
class Parity:
    max_abs_diff: float
    argmax_agreement: float  # fraction of images whose predicted class equals eager's
    accuracy: float  # the artifact's own accuracy on the labels
    eager_accuracy: float
    batch_sizes: list[int]  # batch sizes the artifact was run at, proving a dynamic batch
    images: int
    passed: bool

    def to_dict(self) -> dict:
        return asdict(self)


@torch.inference_mode()
def check_parity(run: Callable[[torch.Tensor], torch.Tensor], eager: nn.Module, x: torch.Tensor,
                 y: torch.Tensor, chunk: int = 1000, tol: float = MAX_ABS_DIFF) -> Parity:
    """Run ``run`` and ``eager`` on the same inputs and compare logits and predictions.

    The whole of ``x`` goes through the artifact in fixed-size chunks and once more as a
    single batch; batches of 1, 7 and 64 are compared too, so a batch dimension that was
    specialised at export time fails here rather than in deployment.
    """
    eager = eager.eval()
    ref = torch.cat([eager(x[i:i + chunk]) for i in range(0, len(x), chunk)])
    got = torch.cat([run(x[i:i + chunk]) for i in range(0, len(x), chunk)])
    diffs = [(got - ref).abs().max().item()]
    whole = run(x)
    diffs.append((whole - ref).abs().max().item())
    sizes = [chunk, len(x)]
    for b in DYNAMIC_BATCHES:
        if b <= len(x):
            diffs.append((run(x[:b]) - ref[:b]).abs().max().item())
            sizes.append(b)
    pred, ref_pred = got.argmax(1), ref.argmax(1)
    agreement = (pred == ref_pred).sum().item() / len(x)  # exact fractions, not float32 means
    max_diff = max(diffs)
    return Parity(max_abs_diff=max_diff, argmax_agreement=agreement,
                  accuracy=(pred == y).sum().item() / len(x), eager_accuracy=(ref_pred == y).sum().item() / len(x),
                  batch_sizes=sorted(set(sizes)), images=len(x),
                  passed=max_diff <= tol and agreement == 1.0)
