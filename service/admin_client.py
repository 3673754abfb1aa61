"""`confidence adapters ...`: the admin API from the command line (list, load, default, rollback,
shadow, promote-shadow, unload)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import httpx

DEFAULT_URL = "http://127.0.0.1:8000"


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("adapters", help="list, load, switch and unload adapters of a running server")
    parser.add_argument("--url", default=os.environ.get("CONFIDENCE_URL", DEFAULT_URL), help="server URL")
    parser.add_argument(
        "--token",
        default=os.environ.get("CONFIDENCE_ADMIN_TOKEN"),
        help="admin bearer token (default: $CONFIDENCE_ADMIN_TOKEN)",
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds (loading warms the adapter up)")
    ops = parser.add_subparsers(dest="op", required=True)
    ops.add_parser("list", help="loaded adapters and the default")
    load = ops.add_parser("load", help="load <adapter_root>/NAME/VERSION")
    load.add_argument("name")
    load.add_argument("version")
    load.add_argument("--default", action="store_true", help="also make it the default")
    default = ops.add_parser("default", help="make NAME[@VERSION] the default")
    default.add_argument("adapter")
    rollback = ops.add_parser("rollback", help="return the default from NAME to the previous default")
    rollback.add_argument("name")
    shadow = ops.add_parser("shadow", help="attach loaded NAME@VERSION as the default's shadow (or --off)")
    shadow.add_argument("adapter", nargs="?", help="NAME@VERSION")
    shadow.add_argument("--fraction", type=float, default=0.1, help="share of default requests it scores")
    shadow.add_argument("--off", action="store_true", help="detach the shadow")
    promote = ops.add_parser(
        "promote-shadow", help="make the shadow the default only if its shadow evidence says better"
    )
    promote.add_argument("--min-labels", type=int, default=200, help="labelled responses both scored")
    promote.add_argument("--window", default="30d", help="feedback received within")
    unload = ops.add_parser("unload", help="stop serving NAME@VERSION (in-flight requests finish)")
    unload.add_argument("adapter", help="NAME@VERSION")
    parser.set_defaults(func=run)


def request(args: argparse.Namespace) -> httpx.Request:
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    if args.op == "list":
        return httpx.Request("GET", f"{args.url}/adapters")
    if args.op == "load":
        body = {"name": args.name, "version": args.version, "make_default": args.default}
        return httpx.Request("POST", f"{args.url}/admin/adapters", json=body, headers=headers)
    if args.op == "default":
        body = {"adapter": args.adapter}
        return httpx.Request("PUT", f"{args.url}/admin/adapters/default", json=body, headers=headers)
    if args.op == "shadow":
        if args.off:
            return httpx.Request("DELETE", f"{args.url}/admin/shadow", headers=headers)
        if not args.adapter:
            raise SystemExit("confidence adapters shadow: give NAME@VERSION (or --off)")
        body = {"adapter": args.adapter, "fraction": args.fraction}
        return httpx.Request("PUT", f"{args.url}/admin/shadow", json=body, headers=headers)
    if args.op == "promote-shadow":
        body = {"min_labels": args.min_labels, "window": args.window}
        return httpx.Request("POST", f"{args.url}/admin/shadow/promote", json=body, headers=headers)
    if args.op == "rollback":
        return httpx.Request("POST", f"{args.url}/admin/adapters/{args.name}/rollback", headers=headers)
    name, sep, version = args.adapter.partition("@")
    if not sep:
        raise SystemExit("confidence adapters unload: give NAME@VERSION")
    return httpx.Request("DELETE", f"{args.url}/admin/adapters/{name}/{version}", headers=headers)


class AdminError(Exception):
    """The server could not be reached or refused the operation (the message says which)."""


def call(args: argparse.Namespace) -> dict[str, Any]:
    """Send one admin operation (`args` as the `adapters` parser builds them); the JSON body.

    Raises:
        AdminError: unreachable, or an error status (with the server's message).
    """
    try:
        with httpx.Client(timeout=args.timeout) as client:
            response = client.send(request(args))
    except httpx.HTTPError as exc:
        raise AdminError(f"cannot reach {args.url}: {exc}") from exc
    try:
        body: dict[str, Any] = response.json()
    except ValueError:
        body = {"error": {"message": response.text}}
    if response.is_error:
        message = body.get("error", {}).get("message", response.text)
        raise AdminError(f"HTTP {response.status_code}: {message}")
    return body


def run(args: argparse.Namespace) -> int:
    try:
        body = call(args)
    except AdminError as exc:
        print(f"confidence adapters {args.op}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(body, indent=2))
    return 0
