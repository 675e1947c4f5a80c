"""The commands about studies: ``search``, ``report``, ``dashboard``, ``export``, ``delete``."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from autocompress.cli.options import Handler, Subparsers, add_code, add_config, add_debug, add_storage, not_the_database, open_study

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
  autocompress report my-study --recheck --code user_model:build   # a study of your own model: name its code
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
  autocompress export my-study --trial 3 --format onnx --code user_model:build   # your own model: name its code

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


def add_search(sub: Subparsers, fmt: type[argparse.HelpFormatter]) -> Handler:
    s = sub.add_parser("search", help="run or resume a compression search", epilog=EXAMPLES_SEARCH, formatter_class=fmt)
    add_config(s)
    s.add_argument("--name", help="study name; an existing study of that name is resumed")
    add_storage(s)
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
    s.add_argument(
        "--allow-chance-baseline",
        action="store_true",
        default=None,
        help="search even when the baseline scores no better than chance (the report marks such a study)",
    )
    s.add_argument("--new-study", action="store_true", default=None, help="never resume: if NAME is taken, start NAME-2 (NAME-3, ...)")
    s.add_argument("--no-progress", action="store_true", help="no progress bar (a line per trial instead)")
    s.add_argument("--quiet", action="store_true", help="print nothing but the final report (and errors)")
    add_debug(s)
    return _search


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
        "search.allow_chance_baseline": args.allow_chance_baseline,
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


def add_report(sub: Subparsers, fmt: type[argparse.HelpFormatter]) -> Handler:
    r = sub.add_parser("report", help="print a study's Pareto front", epilog=EXAMPLES_REPORT, formatter_class=fmt)
    r.add_argument("name", help="study name")
    add_storage(r)
    r.add_argument("--json", action="store_true", help="print the front as a JSON list")
    r.add_argument("--html", metavar="FILE", help="also write a self-contained HTML report with plots")
    r.add_argument("--force", action="store_true", help="replace FILE if it exists (never a link or a device)")
    r.add_argument(
        "--recheck",
        action="store_true",
        help="first evaluate on the test split the front's trials that lack it, and store the results (a search does this when it ends)",
    )
    add_code(r)
    add_debug(r)
    return _report


def _report(args: argparse.Namespace) -> int:
    from autocompress.report import print_report, report_json

    if args.html:  # refused before anything is computed or stored
        from autocompress.outputs import check_output

        not_the_database(args.html, args.storage, "--html")
        check_output(args.html, args.force, "--html")
    study = open_study(args.name, args.storage)
    if args.recheck:
        from autocompress.recheck import recheck

        done = recheck(study, args.code or ())
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


def add_dashboard(sub: Subparsers, fmt: type[argparse.HelpFormatter]) -> Handler:
    d = sub.add_parser(
        "dashboard", help="serve optuna-dashboard on this machine for the study database", epilog=EXAMPLES_DASHBOARD, formatter_class=fmt
    )
    add_storage(d)
    d.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only; others need --allow-remote)")
    d.add_argument("--allow-remote", action="store_true", help="let a non-loopback --host through: anyone who reaches it reads the whole study")
    d.add_argument("--port", type=int, default=8080, help="port to listen on (default: 8080)")
    d.add_argument("--artifact-dir", help="where trial artifacts live (default: the default config's artifact_dir)")
    add_debug(d)
    return _dashboard


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


def add_export(sub: Subparsers, fmt: type[argparse.HelpFormatter]) -> Handler:
    e = sub.add_parser("export", help="write a trial's packed model to a file", epilog=EXAMPLES_EXPORT, formatter_class=fmt)
    e.add_argument("name", help="study name")
    e.add_argument("--trial", type=int, required=True, help="trial number (see 'autocompress report')")
    e.add_argument("-o", "--output", help="output file (default: NAME-trialN.acz or .onnx in the current folder)")
    e.add_argument("--format", default="acz", help="acz (default: the packed artifact, exactly the size measured) or onnx")
    e.add_argument("--precision", help="onnx only: fp32 or int8 (default: the study's deploy precision for an ONNX runtime, else fp32)")
    add_storage(e)
    e.add_argument("--force", action="store_true", help="replace the output file if it exists (never a link or a device)")
    add_code(e)
    add_debug(e)
    return _export


def _export(args: argparse.Namespace) -> int:
    from autocompress.errors import ConfigError
    from autocompress.export import export_trial

    # An unknown --format is refused by export_trial, with the formats it knows.
    if args.precision not in (None, "fp32", "int8") or (args.precision and args.format != "onnx"):
        raise ConfigError(f"--precision {args.precision} applies to --format onnx with fp32 or int8: fix the flags")
    if args.output:
        not_the_database(args.output, args.storage, "-o")
    study = open_study(args.name, args.storage)
    path, how = export_trial(study, args.trial, args.output, args.format, args.precision, args.force, args.code or ())
    from autocompress import _optuna
    from autocompress.baseline import Baseline

    trial = _optuna.trials_by_number(study, [args.trial])[args.trial]
    metric = Baseline.of(study.user_attrs["baseline"]).metric if "baseline" in study.user_attrs else None
    score = f"{metric.name} {metric.format(trial.values[0])}" if metric is not None else f"accuracy {100 * trial.values[0]:.2f}%"
    print(f"wrote {path}: {path.stat().st_size} bytes, {how} (trial {args.trial}: {score}, size_bytes {int(trial.values[1])})")
    return 0


def add_delete(sub: Subparsers, fmt: type[argparse.HelpFormatter]) -> Handler:
    rm = sub.add_parser(
        "delete", help="delete a study: its trials, its rows in autocompress's tables and its artifacts", epilog=EXAMPLES_DELETE, formatter_class=fmt
    )
    rm.add_argument("name", help="study name")
    add_storage(rm)
    rm.add_argument("--yes", action="store_true", help="do not ask (needed when not at a terminal)")
    add_debug(rm)
    return _delete


def _delete(args: argparse.Namespace) -> int:
    from autocompress.config import load_config
    from autocompress.deletion import plan_deletion
    from autocompress.errors import SearchError

    deletion = plan_deletion(args.storage or load_config(None).storage, args.name)
    what = deletion.describe()
    if not args.yes:
        if not sys.stdin.isatty():
            raise SearchError(f"delete {what}: not at a terminal to ask; pass --yes to delete it")
        if input(f"delete {what}? [y/N] ").strip().lower() not in ("y", "yes"):
            print("nothing deleted")
            return 1
    rows, removed = deletion.run()
    print(f"deleted {what}: {rows} rows of autocompress's tables, {removed} artifact files")
    return 0


COMMANDS = {"search": add_search, "report": add_report, "dashboard": add_dashboard, "export": add_export, "delete": add_delete}
