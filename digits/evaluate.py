"""Test-set evaluation of a trained model: confusion matrix, per-class accuracy, mistakes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


@dataclass
class Evaluation:
    accuracy: float
    confusion: np.ndarray  # [10, 10] counts, rows = true class, columns = predicted
    per_class: list[float]  # accuracy of each true class
    mistakes: list[dict]  # {index, true, pred, confidence}, most confident first


@torch.inference_mode()
def evaluate_model(model: nn.Module, x: torch.Tensor, y: torch.Tensor, chunk: int = 2000) -> Evaluation:
    model.eval()
    probs = torch.cat([torch.softmax(model(x[i:i + chunk]), 1) for i in range(0, len(x), chunk)])
    conf, pred = probs.max(1)
    yt, pt = y.numpy(), pred.numpy()
    confusion = np.zeros((10, 10), dtype=np.int64)
    np.add.at(confusion, (yt, pt), 1)
    per_class = (np.diag(confusion) / np.maximum(confusion.sum(1), 1)).tolist()
    wrong = np.nonzero(pt != yt)[0]
    order = wrong[np.argsort(-conf.numpy()[wrong], kind="stable")]
    mistakes = [{"index": int(i), "true": int(yt[i]), "pred": int(pt[i]), "confidence": float(conf[i])} for i in order]
    return Evaluation(accuracy=float((pt == yt).mean()), confusion=confusion, per_class=per_class, mistakes=mistakes)
