"""The ``autocompress`` command line."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from autocompress.errors import AutocompressError
from autocompress.storage import DEFAULT_STORAGE

# Said wherever a storage URL is taken: a URL means the same to every tool (optuna-dashboard, psql).
RELATIVE_SQLITE = "a relative sqlite path is taken from the current folder, not the config's"

EXAMPLES_SEARCH = """examples:
  autocompress search                              # studies/default.yaml: digits-cnn, 20 trials, 2 Ray workers
  autocompress search --trials 40 --workers 2 --sampler nsga2
  autocompress search --trials 40 --pruner front   # stop trials that cannot reach the front, at fine-tuning rungs
  autocompress search studies/default.yaml --name mlp-run --trials 10 --workers 0   # in-process, for debugging
  autocompress search --storage postgresql://user@db-host/autocompress --name shared
  autocompress search studies/cifar10-resnet18.yaml --device cuda --gpus-per-worker 0.5   # two workers share one GPU
Re-running the same command resumes the study and completes the missing trials."""

EXAMPLES_REPORT = """examples:
  autocompress report autocompress
  autocompress report autocompress --json > front.json
  autocompress report autocompress --html studies/report.html   # plots, opens offline
  autocompress report autocompress --recheck   # test-split numbers for a search that stopped early
  optuna-dashboard sqlite:///studies/autocompress.db   # the same study in the browser"""

EXAMPLES_DASHBOARD = """examples:
  autocompress dashboard                       # http://127.0.0.1:8080, studies/autocompress.db
  autocompress dashboard --port 8081 --storage postgresql://user@db-host/autocompress"""

EXAMPLES_EXPORT = """examples:
  autocompress export autocompress --trial 14                 # writes autocompress-trial14.acz
  autocompress export autocompress --trial 14 -o model.acz
  python -c "import autocompress; m = autocompress.load('model.acz')"   # an nn.Module again
  autocompress export autocompress --trial 14 --format onnx   # autocompress-trial14.onnx for ONNX Runtime / OpenVINO
  autocompress export autocompress --trial 14 --format onnx --precision int8 -o model-int8.onnx

ONNX files: layers at <= 8 bits hold the trial's exact integer codes (int8 + per-channel scales
through DequantizeLinear); --precision int8 also quantizes their activations (ranges calibrated
on training batches), so runtimes run integer kernels. Unstructured sparsity stays as zeros in
dense tensors (ONNX runtimes have no faster sparse kernels); channel pruning and low rank make the
layers physically smaller. When the study deployed to onnxruntime or openvino at that precision,
the file written is the very file its accuracy and latency were measured on."""

EXAMPLES_DELETE = """examples:
  autocompress delete old-run              # asks first; lists what goes
  autocompress delete old-run --yes --storage postgresql://user@db-host/autocompress
Removes the Optuna study, its rows in autocompress's own tables and its artifact files, so a new
study of that name starts clean."""

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
  autocompress layers --config studies/cifar10-resnet18.yaml                  # the task of a study config"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="autocompress",
        description="Search per-layer pruning, quantization and low-rank factorization of a PyTorch model "
        "for the best accuracy / size / latency trade-offs.",
        epilog="Run 'autocompress COMMAND --help' for the options and examples of each command.",
    )
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    fmt = argparse.RawDescriptionHelpFormatter

    s = sub.add_parser("search", help="run or resume a compression search", epilog=EXAMPLES_SEARCH, formatter_class=fmt)
    s.add_argument("config", nargs="?", help="study config YAML (default: studies/default.yaml, else built-in defaults)")
    s.add_argument("--name", help="study name; an existing study of that name is resumed")
    s.add_argument("--storage", help=f"SQLAlchemy URL; {RELATIVE_SQLITE} (default: {DEFAULT_STORAGE})")
    s.add_argument("--trials", type=int, help="target number of complete trials in the study")
    s.add_argument("--workers", type=int, help="trials evaluated at once on Ray; 0 evaluates in this process")
    s.add_argument("--sampler", help="auto (default: TPE up to 1,000 trials, NSGA-II above), tpe, nsga2, gp or random")
    s.add_argument("--seed", type=int, help="sampler seed")
    s.add_argument(
        "--pruner",
        help="stop trials early at fine-tuning rungs: none (default), front (cannot reach the Pareto front or the accuracy limit), median or hyperband",
    )
    s.add_argument("--ray-address", help="join this Ray cluster (host:port or 'auto'); default: RAY_ADDRESS, else a local Ray")
    s.add_argument("--cpus-per-worker", type=float, help="CPUs each Ray worker reserves (default 1)")
    s.add_argument("--gpus-per-worker", type=float, help="GPUs each Ray worker reserves (default 0)")
    s.add_argument("--device", help="auto (default: the GPU when a worker has one), cpu or cuda")
    s.add_argument("--max-retries", type=int, help="re-runs of a trial whose worker died (default 1)")
    s.add_argument("--trial-timeout", type=float, help="seconds before a trial is failed and its worker replaced")
    s.add_argument("--timeout", type=float, help="seconds for this run: no trial starts after it; run again to resume")
    s.add_argument("--new-study", action="store_true", default=None, help="never resume: if NAME is taken, start NAME-2 (NAME-3, ...)")
    s.add_argument("--no-progress", action="store_true", help="no progress bar (a line per trial instead)")
    s.add_argument("--quiet", action="store_true", help="print nothing but the final report (and errors)")
    s.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    r = sub.add_parser("report", help="print a study's Pareto front", epilog=EXAMPLES_REPORT, formatter_class=fmt)
    r.add_argument("name", help="study name")
    r.add_argument("--storage", help=f"SQLAlchemy URL; {RELATIVE_SQLITE} (default: {DEFAULT_STORAGE})")
    r.add_argument("--json", action="store_true", help="print the front as a JSON list")
    r.add_argument("--html", metavar="FILE", help="also write a self-contained HTML report with plots")
    r.add_argument("--force", action="store_true", help="replace FILE if it exists (never a link or a device)")
    r.add_argument(
        "--recheck",
        action="store_true",
        help="first evaluate on the test split the front's trials that lack it, and store the results (a search does this when it ends)",
    )
    r.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    d = sub.add_parser(
        "dashboard", help="serve optuna-dashboard on this machine for the study database", epilog=EXAMPLES_DASHBOARD, formatter_class=fmt
    )
    d.add_argument("--storage", help=f"SQLAlchemy URL; {RELATIVE_SQLITE} (default: {DEFAULT_STORAGE})")
    d.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only; others need --allow-remote)")
    d.add_argument("--allow-remote", action="store_true", help="let a non-loopback --host through: anyone who reaches it reads the whole study")
    d.add_argument("--port", type=int, default=8080, help="port to listen on (default: 8080)")
    d.add_argument("--artifact-dir", help="where trial artifacts live (default: the default config's artifact_dir)")
    d.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    e = sub.add_parser("export", help="write a trial's packed model to a file", epilog=EXAMPLES_EXPORT, formatter_class=fmt)
    e.add_argument("name", help="study name")
    e.add_argument("--trial", type=int, required=True, help="trial number (see 'autocompress report')")
    e.add_argument("-o", "--output", help="output file (default: NAME-trialN.acz or .onnx in the current folder)")
    e.add_argument("--format", default="acz", help="acz (default: the packed artifact, exactly the size measured) or onnx")
    e.add_argument("--precision", help="onnx only: fp32 or int8 (default: the study's deploy precision for an ONNX runtime, else fp32)")
    e.add_argument("--storage", help=f"SQLAlchemy URL; {RELATIVE_SQLITE} (default: {DEFAULT_STORAGE})")
    e.add_argument("--force", action="store_true", help="replace the output file if it exists (never a link or a device)")
    e.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    i = sub.add_parser("inspect", help="show what a packed artifact holds", epilog=EXAMPLES_INSPECT, formatter_class=fmt)
    i.add_argument("file", help="an .acz file from 'autocompress export'")
    i.add_argument("--json", action="store_true", help="print as JSON")
    i.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    rm = sub.add_parser(
        "delete", help="delete a study: its trials, its rows in autocompress's tables and its artifacts", epilog=EXAMPLES_DELETE, formatter_class=fmt
    )
    rm.add_argument("name", help="study name")
    rm.add_argument("--storage", help=f"SQLAlchemy URL; {RELATIVE_SQLITE} (default: {DEFAULT_STORAGE})")
    rm.add_argument("--yes", action="store_true", help="do not ask (needed when not at a terminal)")
    rm.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    sen = sub.add_parser(
        "sensitivity",
        help="each group's accuracy drop, size and latency with one knob at one value, before fine-tuning",
        epilog=EXAMPLES_SENSITIVITY,
        formatter_class=fmt,
    )
    sen.add_argument("config", nargs="?", help="study config YAML (default: studies/default.yaml, else built-in defaults)")
    sen.add_argument("--workers", type=int, help="Ray workers measuring at once; 0 measures in this process")
    sen.add_argument("--json", action="store_true", help="print the rows as JSON")
    sen.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    chk = sub.add_parser(
        "check-task", help="dry-run a task (data, loss, metric and its direction) before a search", epilog=EXAMPLES_CHECK_TASK, formatter_class=fmt
    )
    chk.add_argument("config", nargs="?", help="study config YAML (default: studies/default.yaml, else built-in defaults)")
    chk.add_argument("--workers", type=int, help="0 checks in this process; else on one Ray worker (the default, as the config's search runs)")
    chk.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    lay = sub.add_parser("layers", help="list a model's compressible layers and their knobs", epilog=EXAMPLES_LAYERS, formatter_class=fmt)
    lay.add_argument(
        "task", nargs="?", help="model name: registered, torchvision:NAME or module:function (default: the config's); or a study config file"
    )
    lay.add_argument("--config", help="study config whose task (model, dataset, data options) and space to use")
    lay.add_argument("--space", default=None, help="search space YAML (default: the config's space, else the built-in one)")
    lay.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return p


def _search(args: argparse.Namespace) -> int:
    from autocompress.config import load_config
    from autocompress.driver import Driver
    from autocompress.report import print_report

    overrides = {
        "name": args.name,
        "storage": args.storage,
        "search.trials": args.trials,
        "search.workers": args.workers,
        "search.sampler": args.sampler,
        "search.pruner": args.pruner,
        "search.seed": args.seed,
        "search.new_study": args.new_study,
        "search.ray_address": args.ray_address,
        "search.cpus_per_worker": args.cpus_per_worker,
        "search.gpus_per_worker": args.gpus_per_worker,
        "search.device": args.device,
        "search.max_retries": args.max_retries,
        "search.trial_timeout": args.trial_timeout,
        "search.timeout": args.timeout,
    }
    config = load_config(args.config, overrides)
    say = None if args.quiet else lambda line: print(line, flush=True)
    driver = Driver(config, progress=not args.no_progress and not args.quiet and sys.stderr.isatty(), say=say)
    # SIGTERM (a scheduler, `kill`, a container stopping) ends the search as Ctrl-C does: the
    # trials in flight are failed with a reason and the report printed, never a native dump.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        study = driver.run()
    except KeyboardInterrupt:
        if driver.study is not None and driver.study.user_attrs.get("baseline"):
            print_report(driver.study)  # what was found so far is worth seeing
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)  # main() called from Python leaves the caller's handler
    print_report(study)
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _report(args: argparse.Namespace) -> int:
    from autocompress.report import print_report, report_json

    if args.html:  # refused before anything is computed or stored
        from autocompress.outputs import check_output

        _not_the_database(args.html, args.storage, "--html")
        check_output(args.html, args.force, "--html")
    study = _open_study(args.name, args.storage)
    if args.recheck:
        from autocompress.recheck import recheck

        done = recheck(study)
        print(f"re-checked {done} trial{'s' * (done != 1)} on the test split", file=sys.stderr)
    if args.json:
        print(report_json(study))
    else:
        print_report(study)
    if args.html:
        from autocompress.html_report import write_html

        path = write_html(study, args.html, args.force)
        print(f"wrote {path}", file=sys.stderr if args.json else sys.stdout)
    return 0


def _loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


def _check_listen(host: str, port: int) -> None:
    """Refuse, before anything starts, an address the server could not listen on."""
    import errno
    import socket

    from autocompress.errors import ConfigError

    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise ConfigError(f"--host {host} does not resolve ({exc.strerror}): give an address of this machine, e.g. 127.0.0.1") from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server sets it
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(f"port {port} on {host} is in use (--port): pick another port, or stop what holds it") from None
            raise ConfigError(
                f"cannot listen on {host}:{port} ({exc.strerror}): pick an address of this machine (--host) and a free --port"
            ) from None


def _dashboard(args: argparse.Namespace) -> int:
    from optuna.artifacts import FileSystemArtifactStore
    from optuna_dashboard import run_server

    from autocompress._optuna import dashboard_best_trials_feasible_only
    from autocompress.config import load_config
    from autocompress.errors import ConfigError
    from autocompress.storage import mask_url, open_storage

    if not _loopback(args.host) and not args.allow_remote:
        raise ConfigError(
            f"--host {args.host} would serve the study (its trials, configs and models) to other machines, with no "
            "login: keep the default 127.0.0.1 (use an SSH tunnel), or pass --allow-remote if you mean it"
        )
    if not 0 < args.port < 65536:
        raise ConfigError(f"--port {args.port} is outside 1..65535: pick a free port")
    _check_listen(args.host, args.port)
    if args.allow_remote and not _loopback(args.host):
        print(f"warning: serving on {args.host} without authentication: anyone who reaches it can read the study", file=sys.stderr)
    config = load_config(None)
    url = args.storage or config.storage
    storage = open_storage(url, create=False)
    folder = Path(args.artifact_dir or config.artifact_dir)
    print(f"optuna-dashboard on http://{args.host}:{args.port} for {mask_url(url)} (artifacts: {folder}); Ctrl-C stops it")
    dashboard_best_trials_feasible_only()
    run_server(storage, host=args.host, port=args.port, artifact_store=FileSystemArtifactStore(str(folder)) if folder.is_dir() else None)
    return 0


def _open_study(name: str, storage: str | None):
    from autocompress.config import load_config
    from autocompress.report import check_study
    from autocompress.storage import load_study, open_storage

    url = storage or load_config(None).storage
    study = load_study(open_storage(url, create=False), name, url)
    check_study(study)
    return study


def _not_the_database(output: str, storage: str | None, flag: str) -> None:
    """An output path may never be the study's own SQLite file, --force or not."""
    from autocompress.config import load_config
    from autocompress.errors import StorageError
    from autocompress.storage import sqlite_path

    db = sqlite_path(storage or load_config(None).storage)
    if db is not None and Path(output).resolve() == db.resolve():
        raise StorageError(f"'{output}' is the study database itself ({flag}): pick another path")


def _delete(args: argparse.Namespace) -> int:
    import optuna

    from autocompress import _optuna, tables
    from autocompress.artifact_store import artifact_paths, listed_ids, remove_artifacts
    from autocompress.config import load_config
    from autocompress.errors import SearchError
    from autocompress.storage import load_study, open_storage

    url = args.storage or load_config(None).storage
    storage = open_storage(url, create=False)
    study = load_study(storage, args.name, url)
    ids = listed_ids(study)  # every file listed on the study or a trial, failed trials' included
    folder = study.user_attrs.get("artifact_dir")
    paths = artifact_paths(folder, ids) if folder else []  # checked before anything is deleted
    what = f"study '{args.name}' ({sum(_optuna.state_counts(study).values())} trials, {len(ids)} artifact files{f' in {folder}' if folder and ids else ''})"
    if not args.yes:
        if not sys.stdin.isatty():
            raise SearchError(f"delete {what}: not at a terminal to ask; pass --yes to delete it")
        if input(f"delete {what}? [y/N] ").strip().lower() not in ("y", "yes"):
            print("nothing deleted")
            return 1
    study_id = storage.get_study_id_from_name(args.name)
    rows = tables.delete_study_rows(storage.engine, study_id)
    optuna.delete_study(study_name=args.name, storage=storage)
    removed = remove_artifacts(paths)
    print(f"deleted {what}: {rows} rows of autocompress's tables, {removed} artifact files")
    return 0


def _export(args: argparse.Namespace) -> int:
    from autocompress.errors import ConfigError
    from autocompress.export import export_trial

    # An unknown --format is refused by export_trial, with the formats it knows.
    if args.precision not in (None, "fp32", "int8") or (args.precision and args.format != "onnx"):
        raise ConfigError(f"--precision {args.precision} applies to --format onnx with fp32 or int8: fix the flags")
    if args.output:
        _not_the_database(args.output, args.storage, "-o")
    study = _open_study(args.name, args.storage)
    path, how = export_trial(study, args.trial, args.output, args.format, args.precision, args.force)
    from autocompress import _optuna
    from autocompress.baseline import Baseline

    trial = _optuna.trials_by_number(study, [args.trial])[args.trial]
    metric = Baseline.of(study.user_attrs["baseline"]).metric if "baseline" in study.user_attrs else None
    score = f"{metric.name} {metric.format(trial.values[0])}" if metric is not None else f"accuracy {100 * trial.values[0]:.2f}%"
    print(f"wrote {path}: {path.stat().st_size} bytes, {how} (trial {args.trial}: {score}, size_bytes {int(trial.values[1])})")
    return 0


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


def _check_task(args: argparse.Namespace) -> int:
    from autocompress.check_task import check_task
    from autocompress.config import load_config

    config = load_config(args.config, {"search.workers": 1 if args.workers is None else min(args.workers, 1)})
    print(f"checking the task of {config.source}: {config.task.model}", flush=True)
    check_task(config, lambda line: print(line, flush=True))
    print("the task is ready for 'autocompress search'")
    return 0


def _layers(args: argparse.Namespace) -> int:
    from rich.table import Table

    from autocompress.config import load_config
    from autocompress.report import make_console
    from autocompress.space import load_space
    from autocompress.space_file import OPTIONAL_KNOBS
    from autocompress.tasks import TaskSpec, layer_skeleton

    if args.task is not None and args.task.endswith((".yaml", ".yml")) and args.config is None:
        args.task, args.config = None, args.task  # `layers study.yaml`: a config, not a model name
    config = load_config(args.config)
    spec = config.task if args.task is None else TaskSpec(model=args.task)
    space = load_space(args.space or config.space).resolve(*layer_skeleton(spec))
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
    make_console().print(table)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not args.debug:
        logging.getLogger("optuna").setLevel(logging.WARNING)
    handler = {
        "search": _search,
        "report": _report,
        "dashboard": _dashboard,
        "export": _export,
        "inspect": _inspect,
        "layers": _layers,
        "sensitivity": _sensitivity,
        "delete": _delete,
        "check-task": _check_task,
    }[args.command]
    try:
        return handler(args)
    except AutocompressError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: in-flight trials were marked FAIL (reason 'interrupted'); run the same command to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader stopped early (`report --json | head`): nothing is wrong. Later writes,
        # the interpreter's final flush included, go nowhere instead of failing again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
