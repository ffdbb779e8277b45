"""The `python -m node_agent.embedded_broker --port N` entry point that serves a loopback amqtt broker."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from typing import Any

from amqtt.broker import Broker

HOST = "127.0.0.1"
READY_LINE = "ready"


def broker_config(port: int) -> dict[str, Any]:
    """Return the amqtt 0.12 config dict for one anonymous TCP listener on the loopback port."""
    return {
        "listeners": {"default": {"type": "tcp", "bind": f"{HOST}:{port}"}},
        # Only the anonymous-auth plugin: no $SYS publisher, no packet/event loggers.
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }


async def serve(port: int) -> None:
    """Run the broker until SIGTERM or SIGINT, announcing readiness with one `ready` line on stdout."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    broker = Broker(broker_config(port))
    await broker.start()  # returns once the listening socket is bound and accepting
    print(READY_LINE, flush=True)
    try:
        await stop.wait()
    finally:
        await broker.shutdown()


def main(argv: list[str] | None = None) -> int:
    """Parse `--port`, run the broker, and return the process exit code."""
    parser = argparse.ArgumentParser(prog="python -m node_agent.embedded_broker")
    parser.add_argument("--port", type=int, required=True, help="TCP port to listen on at 127.0.0.1")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
