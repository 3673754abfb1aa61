"""`confidence` command line: serve, fetch the embedded model, and the training job."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

log = logging.getLogger("confidence")


def _serve(_: argparse.Namespace) -> int:
    import uvicorn

    from service.app import build_app
    from service.settings import Settings

    settings = Settings()
    holder: dict[str, uvicorn.Server] = {}

    def stop() -> None:
        holder["server"].should_exit = True

    app = build_app(settings, on_fatal=stop)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=settings.log_level)
    server = holder["server"] = uvicorn.Server(config)
    server.run()
    state = app.state.service_state
    if state.detail and state.phase.value == "failed":
        print(f"confidence serve: start-up failed: {state.detail}", file=sys.stderr)
        return 1
    return 0


def _fetch_model(_: argparse.Namespace) -> int:
    from service.errors import ModelFetchError
    from service.lifecycle import resolve_model
    from service.settings import Settings

    try:
        print(resolve_model(Settings()))
    except ModelFetchError as exc:
        print(f"confidence fetch-model: {exc.message}", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="confidence", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    commands: dict[str, tuple[str, Callable[[argparse.Namespace], int]]] = {
        "serve": ("serve the HTTP API (configured by CONFIDENCE_* environment variables)", _serve),
        "fetch-model": ("fetch and convert the embedded default model; print its directory", _fetch_model),
    }
    for name, (help_text, func) in commands.items():
        sub.add_parser(name, help=help_text).set_defaults(func=func)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    return func(args)


if __name__ == "__main__":
    sys.exit(main())
