"""What you ship against what the front sizes: the packed artifact and the ONNX file of the same
plans, in one run.

For the default study's digits-cnn and for LeNet-5 (both trained: the packed size depends on the
weights' values), uniform plans at 8, 4 and 2 bits, a k-means plan at 4 bits and 4 bits with half
the weights pruned are packed (``.acz``) and exported to ONNX fp32 as a study ships them (INT4
initializers for codes of 4 bits or fewer, int8 for wider ones, k-means layers as a codebook and
4-bit indices); each file's bytes, the ratio, and whether ONNX Runtime's outputs equal the
PyTorch model's (within 1e-4).

    python -m benchmarks files [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import numpy as np
import torch

from autocompress import artifact, compress
from autocompress.deploy.onnx_export import to_onnx
from autocompress.plan import CompressionPlan, LayerPlan
from autocompress.tasks import TaskSpec, build_task
from benchmarks.scratch import scratch

PLANS = {
    "8 bits": lambda: LayerPlan(bits=8),
    "4 bits": lambda: LayerPlan(bits=4),
    "2 bits": lambda: LayerPlan(bits=2),
    "4 bits, k-means": lambda: LayerPlan(bits=4, quant_mode="kmeans"),
    "4 bits, 50% pruned": lambda: LayerPlan(bits=4, sparsity=0.5),
}


def files(spec: TaskSpec, cache: str) -> list[dict[str, Any]]:
    import onnxruntime as ort

    task = build_task(spec, cache)
    x = task.data.x_val[:32]
    rows = []
    for name, make in PLANS.items():
        model = task.build_model()
        plan = CompressionPlan({layer: make() for layer in compress.compressible_layers(model)})
        compress.apply(model, plan)
        packed = artifact.pack(model, plan, task.artifact_task(), compress.structure(model)).data
        data, stored = to_onnx(model, plan, x)
        with torch.no_grad():
            expected = model(x).numpy()
        got = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
        rows.append(
            {
                "model": spec.model,
                "plan": name,
                "packed_bytes": len(packed),
                "onnx_bytes": len(data),
                "ratio": round(len(data) / len(packed), 2),
                "layers_as_codes": len(stored),
                "outputs_match": bool(np.allclose(got, expected, atol=1e-4, rtol=1e-4)),
            }
        )
        print(f"{spec.model} {name}: packed {len(packed)} B, ONNX {len(data)} B ({len(data) / len(packed):.2f}x)", flush=True)
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="digits-cnn only, 2 training epochs")
    args = p.parse_args(argv)
    cache = str(scratch("deployed-files-"))
    specs = [TaskSpec(model="digits-cnn", train_epochs=2 if args.quick else 40)]
    if not args.quick:  # studies/fashion-lenet5.yaml's task: real Fashion-MNIST from Debian's package
        from benchmarks.fidelity import TASKS

        specs.append(TaskSpec(**TASKS["lenet5"]["task"]))
    return {"rows": [row for spec in specs for row in files(spec, cache)]}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:]), indent=2))
