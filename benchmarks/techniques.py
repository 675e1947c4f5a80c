"""Weight sharing, Tucker-2, pruning criteria and entropy coding, against Deep Compression.

1. digits-mlp (the LeNet-300-100 shape), 100 trials, 3 seeds, TPE: the default space against
   ``search_spaces/techniques.yaml`` (k-means codebooks, Tucker-2, the criteria), both packed
   in artifact format 2. Target: a front point >= 60x smaller than the fp32 baseline's artifact
   within 0.5 test points in every seed (stretch 80x). Deep Compression reached 40x on
   LeNet-300-100 (Han, Mao, Dally, ICLR 2016, Table 1).
2. Which techniques each front uses: the share of front trials with a k-means layer, a Tucker
   layer, and each pruning criterion.
3. Coding: the same models (every model in the registry, trained; fixed plans, and the
   digits-mlp fronts' artifacts), in bytes: format 1 (bit-packed streams, zlib), format 2's
   two layouts (a symbol per byte, bit-packed) under zlib and LZMA2 (``pack`` keeps the
   smallest of the four), zstd at level 19 on the byte layout, and an order-0 ANS coder
   (constriction) on the code and index streams with its frequency table, the rest zlib.
   Decode time of the two codecs.
4. LeNet-5 on the real Fashion-MNIST, the same wall clock per space: the front's best ratio
   within 0.5 and 1 test points, against Deep Compression's LeNet-5 (39x on MNIST, another
   dataset: Fashion-MNIST is harder to classify and to compress).

Usage: python -m benchmarks.techniques [--trials 100] [--seeds 3] [--lenet-budget 300] [--quick]
"""

from __future__ import annotations

import argparse
import json
import statistics
import struct
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import yaml

from autocompress import artifact, compress, pareto
from autocompress.artifact.packer import Payload
from autocompress.config import load_config
from autocompress.driver import run_search
from autocompress.plan import CompressionPlan, LayerPlan
from autocompress.tasks import MODELS, TaskSpec, build_task
from benchmarks import fidelity, quality
from benchmarks.scratch import scratch

REPO = Path(__file__).resolve().parents[1]
SPACES = {"default": REPO / "search_spaces/default.yaml", "techniques": REPO / "search_spaces/techniques.yaml"}
TARGET_RATIO, STRETCH_RATIO, DROP_POINTS = 60.0, 80.0, 0.5
DEEP_COMPRESSION_LENET5 = 39.0  # LeNet-5 on MNIST, Han et al. 2016, Table 1
# Plans packed for the coding comparison: (label, layer plan for every layer but the last, last)
CODING_PLANS = {
    "8-bit uniform": (LayerPlan(bits=8), LayerPlan(bits=8)),
    "70% + 4-bit": (LayerPlan(sparsity=0.7, bits=4), LayerPlan(sparsity=0.7, bits=4)),
    "90% + 4-bit k-means": (LayerPlan(sparsity=0.9, bits=4, quant_mode="kmeans"), LayerPlan(sparsity=0.5, bits=5, quant_mode="kmeans")),
    "95% + 3-bit k-means": (LayerPlan(sparsity=0.95, bits=3, quant_mode="kmeans"), LayerPlan(sparsity=0.5, bits=5, quant_mode="kmeans")),
    "50% channels + 6-bit": (LayerPlan(sparsity=0.5, structured=True, bits=6), LayerPlan(bits=6)),
}
TASK_SPECS = {
    "digits-mlp": {"model": "digits-mlp"},
    "digits-cnn": {"model": "digits-cnn"},
    "lenet5": fidelity.TASKS["lenet5"]["task"],
}


# ---- 1 and 2: digits-mlp searches ------------------------------------------------------------


def digits_run(folder: Path, space: str, seed: int, trials: int, steps: int | None) -> tuple[optuna.Study, float]:
    path = quality.study_config(folder, f"{space}-{seed}", trials, "tpe", seed, steps)
    config = yaml.safe_load(path.read_text())
    config["space"] = str(SPACES[space])
    config["storage"] = f"sqlite:///{folder / 'techniques.db'}"
    path.write_text(yaml.safe_dump(config))
    start = time.perf_counter()
    study = run_search(load_config(path), progress=False)
    return study, time.perf_counter() - start


def technique_shares(study: optuna.Study) -> dict[str, float]:
    """Share of the front's trials whose plan uses each technique on at least one layer."""
    analysis = pareto.study_analysis(study)
    plans = [study.trials[n].user_attrs.get("plan", {}) for n in analysis.front]
    if not plans:
        return {}

    def share(test: Any) -> float:
        return round(sum(any(test(lp) for lp in plan.values()) for plan in plans) / len(plans), 2)

    out = {
        "kmeans": share(lambda lp: lp.get("quant_mode") == "kmeans" and lp.get("bits", 32) < 32),
        "ternary": share(lambda lp: lp.get("quant_mode") == "ternary"),
        "uniform codes": share(lambda lp: lp.get("quant_mode", "uniform") == "uniform" and lp.get("bits", 32) < 32),
        "tucker": share(lambda lp: lp.get("lowrank_mode") == "tucker"),
        "svd": share(lambda lp: lp.get("rank") and lp.get("lowrank_mode", "svd") == "svd"),
        "channels": share(lambda lp: lp.get("structured") and lp.get("sparsity", 0) > 0),
    }
    for criterion in ("l1", "l2", "taylor", "fpgm"):
        out[f"importance {criterion}"] = share(lambda lp, c=criterion: lp.get("sparsity", 0) > 0 and lp.get("importance", "l1") == c)
    return out


# ---- 3: coding -------------------------------------------------------------------------------


def _body(header: dict[str, Any], payload: bytes) -> bytes:
    head = json.dumps(header, separators=(",", ":")).encode()
    return struct.pack("<I", len(head)) + head + payload


def _count(t: dict[str, Any]) -> int:
    return int(np.prod(t["shape"])) if t["enc"] == "dense" else int(t.get("n", 0))


def _width(t: dict[str, Any], key: str) -> int:
    return int(t["bits"]) if key == "values" else int(t["enc"].rsplit("-", 1)[1])


def _is_stream(t: dict[str, Any], key: str) -> bool:
    if key == "values":
        return t["kind"] in ("codes", "shared")
    return key == "index" and t["enc"].startswith("relative-index-")


def relayout(header: dict[str, Any], payload: bytes, packing: str) -> tuple[dict[str, Any], bytes, list[np.ndarray], bytes]:
    """The same tensors with their code and index streams laid out as ``packing`` says; also
    the streams as symbols and every other payload byte."""
    unpack = artifact.unpack_symbols if header.get("packing", "bytes") == "bytes" else artifact.unpack_uint
    repack = artifact.pack_symbols if packing == "bytes" else artifact.pack_uint
    out, streams, rest = Payload(), [], bytearray()
    tensors = []
    for t in header["tensors"]:
        t = dict(t)
        for key in ("values", "index", "scale", "codebook"):
            if key not in t:
                continue
            chunk = payload[t[key][0] : sum(t[key])]
            if _is_stream(t, key):
                symbols = unpack(chunk, _width(t, key), _count(t))
                streams.append(symbols)
                chunk = repack(symbols, _width(t, key))
            else:
                rest += chunk
            t[key] = out.add(chunk)
        tensors.append(t)
    return {**header, "packing": packing, "tensors": tensors}, out.buf.getvalue(), streams, bytes(rest)


def as_format1(header: dict[str, Any], payload: bytes) -> bytes:
    """The same tensors in format 1's layout: code and relative-index streams bit-packed, zlib."""
    old, body, _, _ = relayout(header, payload, "bits")
    old = {k: v for k, v in old.items() if k != "packing"}
    return artifact.MAGIC_V1 + zlib.compress(_body({**old, "format": 1}, body), 9)


def ans_bytes(header: dict[str, Any], payload: bytes) -> int:
    """Order-0 ANS (constriction) on each stream, its symbol counts stored as uint16 pairs, plus
    the header and the other bytes through zlib."""
    import constriction

    _, _, streams, rest = relayout(header, payload, "bytes")
    total = 5 + len(zlib.compress(_body({**header, "tensors": []}, rest), 9))
    for s in streams:
        if not s.size:
            continue
        symbols, counts = np.unique(s, return_counts=True)
        probs = np.zeros(int(symbols.max()) + 1)
        probs[symbols] = counts
        model = constriction.stream.model.Categorical(probs / probs.sum(), perfect=False)
        coder = constriction.stream.stack.AnsCoder()
        coder.encode_reverse(s.astype(np.int32), model)
        total += 4 * len(coder.get_compressed()) + 4 * symbols.size
    return total


def _decode_ms(data: bytes, repeats: int = 15) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        artifact.read_header(data)
        times.append(time.perf_counter() - start)
    return round(1000 * statistics.median(times), 3)


def coding_row(label: str, data: bytes) -> dict[str, Any]:
    import zstandard

    header, payload = artifact.read_header(data)
    header["channels_removed"] = {k: artifact.index_mask(v) for k, v in header["channels_removed"].items()}
    sealed = {}
    for packing in artifact.PACKINGS:
        h, p, _, _ = relayout(header, payload, packing)
        for codec in artifact.CODECS:
            sealed[packing, codec] = artifact.seal(_body(h, p), codec)
    h, p, _, _ = relayout(header, payload, "bytes")
    return {
        "plan": label,
        "format1_zlib": len(as_format1(header, payload)),
        **{f"{packing}_{codec}": len(v) for (packing, codec), v in sealed.items()},
        "zstd19": 5 + len(zstandard.ZstdCompressor(level=19).compress(_body(h, p))),
        "ans_order0": ans_bytes(header, payload),
        "packed": len(data),
        "kept": f"{header.get('packing')} {artifact.codec_of(data)}",
        "decode_ms_zlib": _decode_ms(sealed["bytes", "zlib"]),
        "decode_ms_lzma": _decode_ms(sealed["bytes", "lzma"]),
    }


def coding(cache: Path, quick: bool) -> list[dict[str, Any]]:
    rows = []
    for model_name in MODELS.names():
        if model_name not in TASK_SPECS:
            continue
        task = build_task(TaskSpec(**TASK_SPECS[model_name]), cache)
        example = task.data.x_val[:2]
        for label, (inner, last) in list(CODING_PLANS.items())[: 2 if quick else None]:
            model = task.build_model()
            names = list(compress.compressible_layers(model))
            plan = CompressionPlan({n: inner if n != names[-1] else last for n in names})
            compress.apply(model, plan, example=example)
            data = artifact.pack(model, plan, task.artifact_task(), compress.structure(model)).data
            rows.append({"model": model_name, **coding_row(label, data)})
            print(f"coding {model_name} {label}: {rows[-1]}", flush=True)
    return rows


def front_coding(study: optuna.Study) -> list[dict[str, Any]]:
    """The coding comparison on the real artifacts of a study's front."""
    from autocompress.artifact_store import read_artifact

    rows = []
    for number in pareto.study_analysis(study).front:
        trial = study.trials[number]
        data = read_artifact(study.user_attrs["artifact_dir"], trial.user_attrs["artifact_id"], f"trial {number}")
        rows.append({"model": study.study_name, **coding_row(f"front trial {number}", data)})
    return rows


# ---- 4: LeNet-5 on Fashion-MNIST -------------------------------------------------------------


def lenet_run(folder: Path, space: str, seed: int, budget: float, cache: Path, steps: int | None) -> dict[str, Any]:
    spec = fidelity.TASKS["lenet5"]
    config = {
        "name": f"lenet5-{space}-{seed}",
        "storage": f"sqlite:///{folder / 'techniques.db'}",
        "cache_dir": str(cache),
        "artifact_dir": str(folder / "artifacts"),
        "space": str(SPACES[space]),
        "task": spec["task"],
        "finetune": {**spec["finetune"], **({"steps": steps} if steps else {})},
        "search": {"trials": 10_000, "workers": 2, "seed": seed, "timeout": budget},
        "pareto": {"max_accuracy_drop": 1.0},
    }
    path = folder / f"{config['name']}.yaml"
    path.write_text(yaml.safe_dump(config))
    start = time.perf_counter()
    study = run_search(load_config(path), progress=False)
    return {
        "space": space,
        "seed": seed,
        "seconds": round(time.perf_counter() - start, 1),
        "complete": len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))),
        "best_test_ratio": fidelity._best_ratios(study),
        "shares": technique_shares(study),
        "hypervolume": pareto.study_analysis(study).hypervolume,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--lenet-budget", type=float, default=300.0, help="seconds per LeNet-5 search")
    parser.add_argument("--lenet-seeds", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="a smoke run: 8 trials of 100 steps, 1 seed, 60 s LeNet-5 searches")
    parser.add_argument("--folder", help="keep the studies here (default: a temporary folder)")
    args = parser.parse_args(argv)
    trials, seeds, steps = (8, 1, quality.QUICK_STEPS) if args.quick else (args.trials, args.seeds, None)
    budget = 60.0 if args.quick else args.lenet_budget
    folder = scratch("techniques-", args.folder)
    folder.mkdir(parents=True, exist_ok=True)
    cache = folder / "baselines"
    runs = []
    front_rows: list[dict[str, Any]] = []
    for seed in range(seeds):
        for space in SPACES:
            study, seconds = digits_run(folder, space, seed, trials, steps)
            a = quality.anchor(study)
            runs.append({"space": space, "seed": seed, "seconds": round(seconds, 1), "anchor": a, "shares": technique_shares(study)})
            best = a["best"]
            print(
                f"digits-mlp {space} seed {seed}: best within {DROP_POINTS} test points {best['ratio'] if best else '-'}x; {seconds:.0f} s",
                flush=True,
            )
            if space == "techniques":
                front_rows += front_coding(study)
    lenet = []
    for seed in range(1 if args.quick else args.lenet_seeds):
        for space in SPACES:
            lenet.append(lenet_run(folder, space, seed, budget, cache, steps))
            print(f"lenet5 {space} seed {seed}: {lenet[-1]}", flush=True)
    rows = coding(cache, args.quick)
    best = {s: [r["anchor"]["best"]["ratio"] if r["anchor"]["best"] else 0.0 for r in runs if r["space"] == s] for s in SPACES}
    summary = {
        "trials": trials,
        "seeds": seeds,
        "best_ratio_per_seed": best,
        "target_met_per_seed": [b >= TARGET_RATIO for b in best["techniques"]],
        "stretch_met_per_seed": [b >= STRETCH_RATIO for b in best["techniques"]],
        "lenet_budget_s": budget,
    }
    print(f"best ratio within {DROP_POINTS} test points per seed: {best}")
    result = {"summary": summary, "runs": runs, "lenet": lenet, "coding": rows, "front_coding": front_rows}
    (folder / "techniques.json").write_text(json.dumps(result, indent=2, default=str))
    return result


if __name__ == "__main__":
    main()
