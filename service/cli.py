"""`confidence` command line: serve, fetch the embedded model, admin and feedback commands, and
the commands installed packages plug in (the training job's label/train/eval)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

log = logging.getLogger("confidence")


def _drained(signum: int, frame: object) -> None:
    log.info("drained after signal %d; exiting", signum)


def _serve(_: argparse.Namespace) -> int:
    import signal

    import uvicorn

    from service.app import build_app
    from service.settings import Settings

    settings = Settings()
    holder: dict[str, uvicorn.Server] = {}

    def stop() -> None:
        holder["server"].should_exit = True

    app = build_app(settings, on_fatal=stop)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=settings.drain_timeout_s,
    )
    server = holder["server"] = uvicorn.Server(config)
    sockets = None
    if settings.metrics_port is not None:  # one server, two listeners (service.api.metrics_port)
        metrics = uvicorn.Config(app, host=settings.host, port=settings.metrics_port)
        sockets = [config.bind_socket(), metrics.bind_socket()]
    # On SIGTERM uvicorn drains (closes the listener, lets in-flight requests finish for up
    # to the drain timeout, runs the lifespan shutdown) and then re-raises the signal into
    # the handler that was installed before it. SIGTERM is how containers and pods are
    # stopped, so a completed drain must end in exit status 0, not in death by the signal.
    signal.signal(signal.SIGTERM, _drained)
    server.run(sockets=sockets)
    state = app.state.service_state
    if state.phase.value == "failed":  # start-up failed, or the watchdog saw the engine die
        print(f"confidence serve: {state.detail}", file=sys.stderr)
        return 1
    return 0


def _fetch_model(_: argparse.Namespace) -> int:
    from service.errors import ModelFetchError
    from service.serving.lifecycle import resolve_model
    from service.settings import Settings

    try:
        print(resolve_model(Settings()))
    except ModelFetchError as exc:
        print(f"confidence fetch-model: {exc.message}", file=sys.stderr)
        return 1
    return 0


def _feedback_export(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from service.errors import FeedbackStoreError
    from service.feedback.export import NothingToExportError, export_jsonl
    from service.feedback.store import open_store
    from service.settings import Settings

    settings = Settings()
    store = open_store(db_url=settings.feedback_db_url, db_path=settings.feedback_db_path)
    since = time.time() - args.days * 86400 if args.days else None
    try:
        trusted_only = args.trusted_only or settings.calibration_trusted_only
        summary = export_jsonl(
            store, Path(args.out), adapter=args.adapter, since=since, trusted_only=trusted_only
        )
    except (NothingToExportError, FeedbackStoreError) as exc:
        print(f"confidence feedback export: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()
    skipped = summary.labelled - summary.written
    print(
        f"wrote {summary.written} of {summary.labelled} labelled responses to {args.out}"
        + (f" (skipped {summary.without_text} without stored text)" if skipped else ""),
        file=sys.stderr,
    )
    return 0


def _feedback_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    feedback = sub.add_parser("feedback", help="the outcome store of served responses and their feedback")
    actions = feedback.add_subparsers(dest="action", required=True)
    export = actions.add_parser(
        "export", help="write labelled responses as training JSONL (the format `confidence train` reads)"
    )
    export.add_argument("--out", required=True, help="JSONL file to write")
    export.add_argument("--adapter", help="only responses scored by this adapter")
    export.add_argument("--days", type=float, help="only feedback received in the last N days")
    export.add_argument(
        "--trusted-only",
        action="store_true",
        help="only labels from CONFIDENCE_FEEDBACK_LABELLERS "
        "(always so when CONFIDENCE_CALIBRATION_TRUSTED_ONLY is set)",
    )
    export.set_defaults(func=_feedback_export)


# Commands other installed packages add (the training job's label/train/eval): their
# options belong to their own parsers, so their arguments pass through untouched.
PLUGIN_GROUP = "confidence.commands"


def plugin_commands() -> dict[str, Callable[[list[str]], int]]:
    """Installed plugin commands by name; each takes its raw arguments and returns an exit code."""
    from importlib.metadata import entry_points

    commands = {}
    for ep in entry_points(group=PLUGIN_GROUP):
        try:
            commands[ep.name] = ep.load()
        except (ImportError, AttributeError) as exc:  # a broken plugin must not break `serve`
            log.warning("command %r not available: %s", ep.name, exc)
    return commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="confidence", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    commands: dict[str, tuple[str, Callable[[argparse.Namespace], int]]] = {
        "serve": ("serve the HTTP API (configured by CONFIDENCE_* environment variables)", _serve),
        "fetch-model": ("fetch and convert the embedded default model; print its directory", _fetch_model),
    }
    for name, (help_text, func) in commands.items():
        sub.add_parser(name, help=help_text).set_defaults(func=func)
    from service import admin_client

    admin_client.add_parser(sub)
    _feedback_parser(sub)
    for name, command in plugin_commands().items():
        summary = (command.__doc__ or "").strip().splitlines()
        passthrough = sub.add_parser(name, help=summary[0] if summary else None, add_help=False)
        passthrough.add_argument("rest", nargs=argparse.REMAINDER)
        passthrough.set_defaults(func=lambda args, command=command: command(list(args.rest)))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    plugins = plugin_commands() if argv else {}
    if argv and argv[0] in plugins:  # argparse would swallow their --help and options
        return plugins[argv[0]](argv[1:])
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    return func(args)


if __name__ == "__main__":
    sys.exit(main())
