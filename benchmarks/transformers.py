"""The transformer yardstick: a small ViT (``vit-small``: 4x4 patches, width 128, 4 layers of 4
heads, 0.54 M weights) on Debian's Fashion-MNIST (studies/fashion-vit.yaml), searched on ONNX
Runtime int8 with every weight matrix a knob (the attention's q/k/v/out included, heads its
structured unit); its front also timed on OpenVINO int8, against the peers on the same trained
ViT: NNCF's post-training int8 (its transformer preset, ONNX backend, so both runtimes load it)
and PyTorch's dynamic int8 of every Linear (timed on torch against the same model in fp32).

Every latency is paired with its runtime's fp32 baseline, 1 thread, batch 32; accuracy is on the
held-out test split, run in the runtime that is timed; sizes are the bytes of the file a user ships.

    python -m benchmarks transformers [--quick]   # about 60 minutes on 2 cores; --quick: 3 minutes
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from benchmarks.yardstick import yardstick

STUDY = Path(__file__).resolve().parent.parent / "studies" / "fashion-vit.yaml"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a smoke run: 2 trials, 10 fine-tuning steps, 1 epoch on 2000 images")
    args = p.parse_args(argv)
    if args.quick:
        return yardstick(2, 10, 1, quick=True, study_file=STUDY, transformer=True)
    return yardstick(30, 150, 5, study_file=STUDY, transformer=True)


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:]), indent=2, default=str))
