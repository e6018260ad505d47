"""How far TF32 moves each checkpoint's logits, emulated on a CPU: the source of the tf32
parity thresholds (digits.precision.TF32_THRESHOLDS).

TF32 tensor cores read each product's inputs with a 10-bit mantissa and accumulate in FP32, so
every Conv2d/Linear weight and input is rounded to 10 mantissa bits (round to nearest even)
and the model run over the MNIST test set against the plain FP32 model:

    python scripts/tf32_emulate.py [--checkpoint artifacts] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def to_tf32(t: torch.Tensor) -> torch.Tensor:
    """``t`` (float32) with its mantissa rounded from 23 to 10 bits, to nearest even."""
    i = t.float().contiguous().view(torch.int32)
    return ((i + 0x0FFF + ((i >> 13) & 1)) & ~0x1FFF).view(torch.float32)


def emulated(net: nn.Module) -> nn.Module:
    em = copy.deepcopy(net)
    for mod in em.modules():
        if isinstance(mod, (nn.Conv2d, nn.Linear)):
            mod.weight.data = to_tf32(mod.weight.data)
            mod.register_forward_pre_hook(lambda _m, args: (to_tf32(args[0]),))
    return em


def main() -> None:
    from digits.checkpoint import checkpoint_dir, load_checkpoint, missing_checkpoint
    from digits.data import default_root, load_test
    from digits.errors import DigitsError
    from digits.models import list_models

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, default=Path("artifacts"))
    ap.add_argument("--data-dir", type=Path, default=None)
    args = ap.parse_args()
    if why := missing_checkpoint(args.checkpoint, list_models()):
        ap.error(f"--checkpoint {args.checkpoint}: {why}")
    try:
        x, _ = load_test(args.data_dir or default_root())
    except DigitsError as e:
        ap.error(f"--data-dir {args.data_dir or default_root()}: {e}")
    for m in list_models():
        net = load_checkpoint(checkpoint_dir(args.checkpoint, m), m)[0].eval()
        tf32 = emulated(net)
        with torch.inference_mode():
            a = torch.cat([net(x[i:i + 1000]) for i in range(0, len(x), 1000)])
            b = torch.cat([tf32(x[i:i + 1000]) for i in range(0, len(x), 1000)])
        agree = (a.argmax(1) == b.argmax(1)).float().mean().item()
        print(f"{m}: max |logit diff| {(a - b).abs().max().item():.4f}, argmax agreement {agree:.4f}, "
              f"largest |logit| {a.abs().max().item():.2f} ({len(x)} test images)")


if __name__ == "__main__":
    main()
