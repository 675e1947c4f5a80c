"""The commands about models and tasks: ``layers``, ``inspect``, ``sensitivity``, ``check-task``."""

from __future__ import annotations

import argparse

from autocompress.cli.options import Handler, Subparsers, add_config, add_debug

EXAMPLES_INSPECT = """examples:
  autocompress inspect model.acz
  autocompress inspect model.acz --json"""

EXAMPLES_SENSITIVITY = """examples:
  autocompress sensitivity                                  # studies/default.yaml's task and space
  autocompress sensitivity studies/fashion-lenet5.yaml --workers 0
  autocompress sensitivity --json > sensitivity.json
Each group's knob is set to one value at a time, the rest of the model left as it is, and the
model measured without fine-tuning: validation accuracy drop (points), packed size, and latency
where the knob changes the kernels that run. Cached per task, space and deploy target next to the
baselines; a search measures it first by default and plans its warm start's ladder from it."""

EXAMPLES_CHECK_TASK = """examples:
  autocompress check-task examples/regression/study.yaml               # on one Ray worker, as a search would
  autocompress check-task examples/regression/study.yaml --workers 0   # in this process
A dry run before a search: the task function runs here (its model takes its example_input, the
space matches its layers, its functions pickle); then, on a worker, each split opens and gives
two batches, the loss takes a training batch, the metric scores validation and test batches, and
the trained model beats an untrained copy in the metric's declared direction. One line a check;
the first failure ends it with 'error: ...' and exit code 2."""

EXAMPLES_LAYERS = """examples:
  autocompress layers digits-cnn
  autocompress layers digits-mlp --space search_spaces/default.yaml
  autocompress layers torchvision:resnet50 --space search_spaces/deep.yaml   # knobs shared per block
  autocompress layers --config studies/cifar10-resnet18.yaml                  # the task of a study config
  autocompress layers torchvision:vit_b_16 --json > layers.json               # built at its own 224x224
The last line says what share of the model's weights the listed layers hold, and names what is
left uncompressed (norms, embeddings, fused attention projections...) and why."""


def add_inspect(sub: Subparsers, fmt: type[argparse.HelpFormatter]) -> Handler:
    i = sub.add_parser("inspect", help="show what a packed artifact holds", epilog=EXAMPLES_INSPECT, formatter_class=fmt)
    i.add_argument("file", help="an .acz file from 'autocompress export'")
    i.add_argument("--json", action="store_true", help="print as JSON")
    add_debug(i)
    return _inspect


def _inspect(args: argparse.Namespace) -> int:
    import json

    from rich.table import Table

    from autocompress.export import describe
    from autocompress.report import make_console, plan_summary

    info = describe(args.file)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    console = make_console()
    task = info["task"]
    console.print(
        f"{info['file']}: {info['size_bytes']} bytes ({info['unpacked_bytes']} before {info['codec']}, format {info['format']}), "
        f"model {task['model']} ({task.get('num_classes', '?')} classes, input {task.get('input_shape', '?')}), {info['params']} parameters"
    )
    console.print(f"plan: {plan_summary(info['plan'])}")
    for layer, idxs in info["channels_removed"].items():
        console.print(f"channels removed from {layer}: {len(idxs)}")
    for bn, layer in info["bn_folded"].items():
        console.print(f"BatchNorm {bn} folded into {layer}")
    table = Table()
    for col in ("tensor", "shape", "kind", "encoding", "bits", "bytes"):
        table.add_column(col)
    for t in info["tensors"]:
        table.add_row(t["name"], "x".join(map(str, t["shape"])), t["kind"], t["encoding"], str(t["bits"] or ""), str(t["bytes"]))
    console.print(table)
    return 0


def add_sensitivity(sub: Subparsers, fmt: type[argparse.HelpFormatter]) -> Handler:
    sen = sub.add_parser(
        "sensitivity",
        help="each group's accuracy drop, size and latency with one knob at one value, before fine-tuning",
        epilog=EXAMPLES_SENSITIVITY,
        formatter_class=fmt,
    )
    add_config(sen)
    sen.add_argument("--workers", type=int, help="Ray workers measuring at once; 0 measures in this process")
    sen.add_argument("--json", action="store_true", help="print the rows as JSON")
    add_debug(sen)
    return _sensitivity


def _sensitivity(args: argparse.Namespace) -> int:
    import json

    from rich.table import Table

    from autocompress import sensitivity
    from autocompress.config import load_config
    from autocompress.driver.warm_start import measure_sensitivity
    from autocompress.report import make_console

    config = load_config(args.config, {"search.workers": args.workers})
    space, reference, rows = measure_sensitivity(config, (lambda _line: None) if args.json else lambda line: print(line, flush=True))
    if args.json:
        print(json.dumps({"reference": reference, "rows": [r.to_dict() for r in rows]}, indent=2))
        return 0
    groups, labels, z = sensitivity.heat(rows)
    table = Table(title=f"accuracy drop in points, one-shot (reference {100 * reference['accuracy']:.2f}%, {reference['size_bytes'] / 1024:.1f} KB)")
    table.add_column("group")
    for label in labels:
        table.add_column(label, justify="right")
    for group, row in zip(groups, z, strict=True):
        table.add_row(group, *("" if v is None else f"{v:.1f}" for v in row))
    console = make_console()
    console.print(table)
    console.print("b = bits, s = unstructured sparsity, c = channels removed, r = rank fraction; blank: not in the space")
    for plan in sensitivity.ladder(space, rows, int(reference["size_bytes"]), config.search.ladder):
        chosen = ", ".join(f"{g} {plan.params.get(f'{g}.bits', '-')}b s{plan.params.get(f'{g}.sparsity', 0):g}" for g in space.groups)
        console.print(
            f"ladder {plan.target:g}x: {chosen} (summed one-shot drop {plan.estimated_drop:.1f} pts, about {plan.estimated_bytes / 1024:.1f} KB)"
        )
    return 0


def add_check_task(sub: Subparsers, fmt: type[argparse.HelpFormatter]) -> Handler:
    chk = sub.add_parser(
        "check-task", help="dry-run a task (data, loss, metric and its direction) before a search", epilog=EXAMPLES_CHECK_TASK, formatter_class=fmt
    )
    add_config(chk)
    chk.add_argument("--workers", type=int, help="0 checks in this process; else on one Ray worker (the default, as the config's search runs)")
    add_debug(chk)
    return _check_task


def _check_task(args: argparse.Namespace) -> int:
    from autocompress.check_task import check_task
    from autocompress.config import load_config

    config = load_config(args.config, {"search.workers": 1 if args.workers is None else min(args.workers, 1)})
    print(f"checking the task of {config.source}: {config.task.model}", flush=True)
    check_task(config, lambda line: print(line, flush=True))
    print("the task is ready for 'autocompress search'")
    return 0


def add_layers(sub: Subparsers, fmt: type[argparse.HelpFormatter]) -> Handler:
    lay = sub.add_parser("layers", help="list a model's compressible layers and their knobs", epilog=EXAMPLES_LAYERS, formatter_class=fmt)
    lay.add_argument(
        "task", nargs="?", help="model name: registered, torchvision:NAME or module:function (default: the config's); or a study config file"
    )
    lay.add_argument("--config", help="study config whose task (model, dataset, data options) and space to use")
    lay.add_argument("--space", default=None, help="search space YAML (default: the config's space, else the built-in one)")
    lay.add_argument("--json", action="store_true", help="print the layers, their knobs and what is left uncompressed as JSON")
    add_debug(lay)
    return _layers


def _layers(args: argparse.Namespace) -> int:
    from rich.table import Table

    from autocompress.config import load_config
    from autocompress.report import make_console
    from autocompress.space import load_space
    from autocompress.space_file import OPTIONAL_KNOBS
    from autocompress.survey import coverage_line, weight_coverage
    from autocompress.tasks import TaskSpec, layer_skeleton

    if args.task is not None and args.task.endswith((".yaml", ".yml")) and args.config is None:
        args.task, args.config = None, args.task  # `layers study.yaml`: a config, not a model name
    config = load_config(args.config)
    spec = config.task if args.task is None else TaskSpec(model=args.task)
    model, example = layer_skeleton(spec)
    space = load_space(args.space or config.space).resolve(model, example)
    coverage = weight_coverage(model, set(space.layers))
    if args.json:
        import json

        print(
            json.dumps(
                {"model": spec.model, "space": space.source, "layers": [_layer_json(ls) for ls in space.layers.values()], "coverage": coverage},
                indent=2,
            )
        )
        return 0
    groups = f", {len(space.groups)} groups" if space.grouped else ""
    from autocompress.tasks.custom import task_protocol

    # Only where listing ran the task function anyway: a build hook with task.input_shape never runs it.
    runs_function = spec.build is None or spec.input_shape is None
    protocol = task_protocol(spec) if runs_function else None
    metric = protocol.metric.info() if protocol is not None else None
    scored = f"; scored by {metric.name}, {metric.better} is better" if metric is not None else ""
    table = Table(title=f"{spec.model}: {len(space.layers)} layers{groups}, {space.dimensions} searched knobs ({space.source}){scored}")
    shown = {k: any(not ls.knobs[k].off for ls in space.layers.values()) for k in OPTIONAL_KNOBS}  # columns only for knobs in use
    for col in (
        "layer",
        *(("group",) if space.grouped else ()),
        "type",
        "weight",
        "params",
        "full rank",
        "sparsity",
        "mode",
        "bits",
        "rank fraction",
        *(k.replace("_", " ") for k in OPTIONAL_KNOBS if shown[k]),
        *(("notes",) if any(ls.notes for ls in space.layers.values()) else ()),
    ):
        table.add_column(col)
    for ls in space.layers.values():
        params = 1
        for d in ls.weight_shape:
            params *= d
        table.add_row(
            ls.name,
            *((ls.group,) if space.grouped else ()),
            ls.type,
            "x".join(map(str, ls.weight_shape)),
            str(params),
            "-" if ls.full_rank is None else str(ls.full_rank),
            *(ls.knobs[k].describe() for k in ("sparsity",)),
            ls.knobs["sparsity_mode"].describe() if not ls.knobs["sparsity_mode"].fixed or ls.knobs["sparsity_mode"].value else "unstructured",
            *(ls.knobs[k].describe() for k in ("bits", "rank")),
            *(ls.knobs[k].describe() for k in OPTIONAL_KNOBS if shown[k]),
            *(("; ".join(ls.notes),) if any(x.notes for x in space.layers.values()) else ()),
        )
    console = make_console()
    console.print(table)
    console.print(coverage_line(coverage))
    return 0


def _layer_json(ls) -> dict:
    params = 1
    for d in ls.weight_shape:
        params *= d
    return {
        "name": ls.name,
        "group": ls.group,
        "type": ls.type,
        "weight_shape": list(ls.weight_shape),
        "params": params,
        "full_rank": ls.full_rank,
        "knobs": {k: knob.to_dict() for k, knob in ls.knobs.items() if not knob.off},
        "notes": list(ls.notes),
    }


COMMANDS = {"layers": add_layers, "inspect": add_inspect, "sensitivity": add_sensitivity, "check-task": add_check_task}
