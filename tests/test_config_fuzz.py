"""Property: any YAML document either loads as a config / space or raises AutocompressError."""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path

import optuna
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autocompress.config import load_config
from autocompress.errors import AutocompressError
from autocompress.space import parse_space
from autocompress.tasks import TaskSpec, model_skeleton

optuna.logging.set_verbosity(optuna.logging.WARNING)

# Real key names make the fuzzer reach deep validation paths, not just "unknown key".
KEYS = st.sampled_from(
    [
        "name",
        "storage",
        "task",
        "space",
        "search",
        "finetune",
        "latency",
        "deploy",
        "runtime",
        "precision",
        "resource",
        "cache_dir",
        "artifact_dir",
        "model",
        "dataset",
        "seed",
        "trials",
        "workers",
        "sampler",
        "warm_start",
        "pruner",
        "rungs",
        "ladder",
        "timeout",
        "sensitivity",
        "steps",
        "lr",
        "backend",
        "layers",
        "exclude",
        "knobs",
        "overrides",
        "sparsity",
        "sparsity_mode",
        "bits",
        "rank",
        "low",
        "high",
        "step",
        "log",
        "fc1",
        "*",
    ]
) | st.text(max_size=8)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-5, 40)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from(["tpe", "channel", "unstructured", "digits-mlp", "fc*", "int8", ""])
    | st.text(max_size=8)
)
NUMBERS = st.floats(allow_nan=True, allow_infinity=True) | st.integers(-2, 40) | st.sampled_from([0.0, 0.1, 0.5, 0.95, 1.0])
RANGES = st.fixed_dictionaries(
    {"low": NUMBERS, "high": NUMBERS},
    optional={"step": NUMBERS | st.none(), "log": st.booleans() | st.text(max_size=3)},
)
SPACES = st.fixed_dictionaries(
    {
        "knobs": st.dictionaries(
            st.sampled_from(["sparsity", "bits", "rank", "sparsity_mode"]), RANGES | SCALARS | st.lists(SCALARS, max_size=4), max_size=4
        )
    },
    optional={"layers": st.lists(st.sampled_from(["*", "fc*", "conv1", "nope"]), max_size=3)},
)
DOCUMENTS = st.recursive(SCALARS | RANGES, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=5), max_leaves=25)

MODEL, EXAMPLE = model_skeleton(TaskSpec(model="digits-cnn"))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(DOCUMENTS)
def test_config_loader_loads_or_raises_autocompress_error(document: object) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "study.yaml"
        path.write_text(yaml.safe_dump(document))
        with contextlib.suppress(AutocompressError):
            load_config(path)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(DOCUMENTS | SPACES)
def test_space_parser_loads_or_raises_autocompress_error(document: object) -> None:
    try:
        space = parse_space(document, "fuzz.yaml").resolve(MODEL, EXAMPLE)
    except AutocompressError:
        return
    # A space that validates must also sample plans the compressor accepts.
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    plan = space.sample(study.ask())
    assert set(plan.layers) == set(space.layers)
    for name, layer_plan in plan.layers.items():
        assert 0.0 <= layer_plan.sparsity <= 0.99 and (layer_plan.bits in range(2, 17) or layer_plan.bits == 32)
        limit = space.layers[name].full_rank
        assert layer_plan.rank is None or (limit is not None and 1 <= layer_plan.rank <= limit)
