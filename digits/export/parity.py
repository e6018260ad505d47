"""The one parity function: does a reloaded artifact compute what the eager model computes?

Used by ``digits export``, ``digits verify``, every ``digits bench`` backend x precision
(:func:`check_parity` on the full test set) and every timed bench cell
(:func:`compare_logits` on that cell's own output), and the test suite.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn

import math

from digits.precision import FP32_THRESHOLDS, passes, thresholds

MAX_ABS_DIFF = FP32_THRESHOLDS["max_abs_diff"]  # FP32's pass criterion on logits
DYNAMIC_BATCHES = (1, 7, 64)  # besides the chunks


@dataclass
class Parity:
    max_abs_diff: float
    argmax_agreement: float  # fraction of images whose predicted class equals eager's
    accuracy: float  # the artifact's own accuracy on the labels
    eager_accuracy: float
    batch_sizes: list[int]  # batch sizes the artifact was run at, proving a dynamic batch
    images: int
    passed: bool
    precision: str = "fp32"
    thresholds: dict | None = None  # what ``passed`` was judged against (digits.precision)

    def to_dict(self) -> dict:
        return asdict(self)


@torch.inference_mode()
def check_parity(run: Callable[[torch.Tensor], torch.Tensor], eager: nn.Module | Callable | torch.Tensor, x: torch.Tensor,
                 y: torch.Tensor, chunk: int = 1000, precision: str = "fp32") -> Parity:
    """Run ``run`` and ``eager`` on the same inputs and compare logits and predictions.

    The whole of ``x`` goes through the artifact in chunks of ``chunk`` images, and batches
    of 1, 7 and 64 are compared too, so a batch dimension that was specialised at export
    time fails here rather than in deployment. (Until 2026-11-30 the whole set also went
    through as one batch of 10,000: it proved nothing the chunks do not, and its buffers
    stayed in every runtime's arena, 0.8 GB for one onnxruntime session.) ``precision`` picks
    the thresholds: FP32 must match logits, a reduced precision must keep accuracy and
    predictions (see :mod:`digits.precision`). ``eager`` may be a module, or the reference
    logits for ``x`` already computed (:func:`reference_logits`), as the bench does once per
    model for all its cells.
    """
    ref = eager if isinstance(eager, torch.Tensor) else reference_logits(eager, x, chunk)
    got = torch.cat([run(x[i:i + chunk]) for i in range(0, len(x), chunk)])
    diffs = [(got - ref).abs().max().item()]
    sizes = [min(chunk, len(x))]
    for b in DYNAMIC_BATCHES:
        if b <= len(x):
            diffs.append((run(x[:b]) - ref[:b]).abs().max().item())
            sizes.append(b)
    pred, ref_pred = got.argmax(1), ref.argmax(1)
    agreement = (pred == ref_pred).sum().item() / len(x)  # exact fractions, not float32 means
    figures = dict(max_abs_diff=max(diffs), argmax_agreement=agreement, accuracy=(pred == y).sum().item() / len(x),
                   eager_accuracy=(ref_pred == y).sum().item() / len(x))
    return Parity(**figures, batch_sizes=sorted(set(sizes)), images=len(x), passed=passes(precision, **figures),
                  precision=precision, thresholds=thresholds(precision))


@torch.inference_mode()
def reference_logits(eager: nn.Module | Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                     chunk: int = 1000) -> torch.Tensor:
    """``eager``'s logits for ``x`` in chunks: what :func:`check_parity` compares against."""
    if isinstance(eager, nn.Module):
        eager = eager.eval()
    return torch.cat([eager(x[i:i + chunk]) for i in range(0, len(x), chunk)])


def compare_logits(got: torch.Tensor, ref: torch.Tensor, precision: str = "fp32") -> dict:
    """Logits of one call against eager FP32's for the same images, judged by ``precision``'s
    thresholds: FP32 (and TF32, looser) must match logits (max_abs_diff) and predictions, a
    reduced precision its predictions (argmax agreement). Non-finite logits never pass."""
    got, ref = got.detach().float().cpu(), ref.detach().float().cpu()
    if got.shape != ref.shape:
        raise ValueError(f"logits of shape {tuple(got.shape)} against a reference of shape {tuple(ref.shape)}")
    diff = (got - ref).abs().max().item()
    agreement = (got.argmax(1) == ref.argmax(1)).sum().item() / len(ref)
    t = thresholds(precision)
    ok = math.isfinite(diff) and agreement >= t["argmax_agreement"] and diff <= t.get("max_abs_diff", math.inf)
    return {"max_abs_diff": diff, "argmax_agreement": agreement, "images": len(ref), "passed": ok,
            "precision": precision, "thresholds": {k: v for k, v in t.items() if k != "accuracy_delta"}}
