"""``lexigram-tasks dashboard APP``: serve the dashboard of an application alone.

Core's CLI calls :func:`register` through the ``lexigram.tasks.cli`` entry
point. The application is found as ``lexigram-tasks worker`` finds it
(``APP``, ``-A``, ``--config``). It binds 127.0.0.1 unless ``--host`` says
otherwise, and is read-only unless ``--allow-actions`` is given.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import signal
from collections.abc import Iterator
from typing import Any

from lexigram.tasks.cli import EXIT_OK, EXIT_USAGE, CLIError, add_app_arguments, load_app, status

DESCRIPTION = """\
Serve the web dashboard of an application: queues and their counts, jobs,
failures (the dead letter queue), schedules and workers. Read-only unless
--allow-actions is given. Anyone who can reach the port sees job arguments:
keep the default 127.0.0.1, or mount dashboard() inside your own app behind
its authentication (docs/dashboard.md).
"""


def register(subparsers: Any) -> None:
    """Add the ``dashboard`` command to core's ``argparse`` sub-parsers."""
    parser = subparsers.add_parser(
        "dashboard",
        help="serve the web dashboard",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_app_arguments(parser, positional=True)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=_port, default=8080, help="port (default 8080)")
    parser.add_argument(
        "--allow-actions",
        action="store_true",
        help="allow cancel, retry, replay, purge, pause/resume and trigger from the pages",
    )
    parser.add_argument(
        "--trace-url",
        metavar="TEMPLATE",
        help="link to a trace, with {trace_id}: e.g. http://jaeger:16686/trace/{trace_id}",
    )
    parser.add_argument(
        "--refresh", type=float, default=5.0, metavar="SECONDS", help="live refresh (default 5)"
    )
    parser.set_defaults(func=run)


async def run(args: argparse.Namespace) -> int:
    from lexigram.tasks.dashboard import dashboard

    provider = load_app(args)
    try:
        app = dashboard(
            provider,
            allow_actions=args.allow_actions,
            trace_url=args.trace_url,
            refresh=args.refresh,
        )
    except ValueError as exc:
        raise CLIError(str(exc), EXIT_USAGE) from None
    if not _is_loopback(args.host):
        status(
            f"warning: serving on {args.host} without authentication: anyone who can reach "
            "it sees job arguments (mount dashboard() behind your app's auth instead)"
        )
    server = _server(app, args.host, args.port)
    shown = f"[{args.host}]" if ":" in args.host else args.host
    mode = "actions allowed" if args.allow_actions else "read-only"
    status(f"dashboard on http://{shown}:{args.port}/ ({mode}); Ctrl-C stops it")
    try:
        await server.serve()
    finally:
        await provider.disconnect()
    return EXIT_OK


def _server(app: Any, host: str, port: int) -> Any:
    """A uvicorn server that stops gracefully on SIGINT/SIGTERM and then returns.

    uvicorn re-raises the signal once it has stopped, which would end the
    process before the provider is disconnected (and exit 130 on Ctrl-C);
    like ``lexigram-tasks worker``, the first signal stops cleanly with status 0.
    """
    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            loop = asyncio.get_running_loop()
            handled = (signal.SIGINT, signal.SIGTERM)
            for signum in handled:
                loop.add_signal_handler(signum, self.handle_exit, signum, None)
            try:
                yield
            finally:
                for signum in handled:
                    loop.remove_signal_handler(signum)

    config = uvicorn.Config(app, host=host, port=port, lifespan="off", log_level="warning")
    return Server(config)


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port number (0 to 65535)")
    return port


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
