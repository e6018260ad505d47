"""Honest confidence: temperature scaling fitted on the validation split, and its ECE.

The default recipes train with label smoothing, so a clean digit reads 93-96% rather than
~100%, and a wrong answer can read 60%. Temperature scaling (Guo et al., 2017) divides the
logits by one scalar T, fitted to minimise the validation split's negative log-likelihood;
it never changes a prediction, only how sure it says it is. The expected calibration error
(ECE: the gap between confidence and accuracy, averaged over 15 equal-width confidence
bins, weighted by how many predictions fall in each) is reported before and after on the
test set. A prediction whose calibrated top probability is under ``UNSURE_BELOW`` is
reported as unsure instead of as an answer.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

UNSURE_BELOW = 0.6  # calibrated top probability under which `predict`, the API and the page say "unsure"
BINS = 15


def fit_temperature(logits: torch.Tensor, y: torch.Tensor) -> float:
    """The T > 0 that minimises NLL(softmax(logits / T), y): a 1-D convex problem in log T,
    solved by golden-section search over T in [0.05, 20]."""
    import torch.nn.functional as F  # here: predicting with a fitted T needs numpy alone

    logits, y = logits.detach().double().cpu(), y.detach().cpu()

    def nll(log_t: float) -> float:
        return F.cross_entropy(logits / math.exp(log_t), y).item()

    lo, hi = math.log(0.05), math.log(20.0)
    g = (math.sqrt(5) - 1) / 2
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = nll(a), nll(b)
    for _ in range(60):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = nll(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = nll(b)
    return math.exp((lo + hi) / 2)


def ece(probs: torch.Tensor, y: torch.Tensor, bins: int = BINS) -> float:
    """Expected calibration error of ``probs`` [N, classes] against labels ``y``."""
    import torch

    conf, pred = probs.detach().cpu().max(1)
    right = (pred == y.detach().cpu()).double()  # labels may still sit on the training device
    edges = torch.linspace(0, 1, bins + 1, dtype=torch.float64)
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        inside = (conf > lo) & (conf <= hi)
        if inside.any():
            total += inside.double().mean().item() * abs(conf[inside].double().mean().item() - right[inside].mean().item())
    return total


def calibration(val_logits: torch.Tensor, val_y: torch.Tensor, test_logits: torch.Tensor, test_y: torch.Tensor) -> dict:
    """What the manifest records: the temperature, and the test set's ECE before and after."""
    import torch

    t = fit_temperature(val_logits, val_y)
    return {"temperature": round(t, 4), "fitted_on": "validation split", "bins": BINS,
            "test_ece_before": round(ece(torch.softmax(test_logits.double(), 1), test_y), 5),
            "test_ece_after": round(ece(torch.softmax(test_logits.double() / t, 1), test_y), 5),
            "unsure_below": UNSURE_BELOW}


def temperature_of(manifest: dict) -> float:
    """A checkpoint's temperature (1.0 for checkpoints trained before calibration existed)."""
    return float((manifest.get("calibration") or {}).get("temperature", 1.0))


def calibrated(logits, temperature: float = 1.0) -> np.ndarray:
    """Probabilities as every reader reports them: the softmax of the logits over the
    checkpoint's temperature (float32, [N, 10]). In numpy: on a served request's [1, 10]
    torch's op dispatch cost four times the arithmetic."""
    z = np.asarray(logits, dtype=np.float32) / np.float32(temperature)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def read_digits(boxes: list, logits, temperature: float = 1.0, unsure_below: float = UNSURE_BELOW) -> dict:
    """Digits found left to right and their logits -> what `digits predict` and the API answer:
    ``{number, unsure, digits: [{box, prediction, probabilities, unsure}]}``, calibrated by
    ``temperature``, "?" in ``number`` for an unsure digit, plus ``prediction`` and
    ``probabilities`` at the top level when one digit was read."""
    probs = calibrated(logits, temperature)
    digits = [{"box": None if box is None else list(box), "prediction": int(p.argmax()),
               "probabilities": np.round(p.astype(np.float64), 6).tolist(), "unsure": bool(p.max() < unsure_below)}
              for box, p in zip(boxes, probs, strict=True)]
    out = {"number": "".join("?" if d["unsure"] else str(d["prediction"]) for d in digits),
           "unsure": any(d["unsure"] for d in digits), "digits": digits}
    if len(digits) == 1:
        out.update(prediction=digits[0]["prediction"], probabilities=digits[0]["probabilities"])
    return out
