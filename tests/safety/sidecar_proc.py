"""A real sidecar process over the one-NPC world (`tests.safety.world`), for tests that kill it.

    python -m tests.safety.sidecar_proc --state-dir DIR --endpoint-file FILE [--save-every-s S] [--setting k=v ...]

Binds ``tcp://127.0.0.1:*`` and writes the bound endpoint to FILE once serving. Stops on
SIGTERM/SIGINT (saving sessions, as ``narrative serve`` does); ``kill -9`` is the crash case.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
from pathlib import Path

import app  # noqa: F401  (its __init__ imports llama_cpp first, as at every entry point)
from bridge.server import SidecarServer, install_stop_signals
from bridge.settings import ServerSettings
from tests.safety.world import make_model, make_service


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--state-dir", type=Path, required=True)
    ap.add_argument("--endpoint-file", type=Path, required=True)
    ap.add_argument("--save-every-s", type=float, default=0.0)
    ap.add_argument("--setting", action="append", default=[], help="server setting k=v (JSON value)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    server_kw = {k: json.loads(v) for k, v in (s.split("=", 1) for s in args.setting)}
    service = make_service(make_model(), state_dir=args.state_dir, save_every_s=args.save_every_s)
    server = SidecarServer(service, ServerSettings(endpoint="tcp://127.0.0.1:*", **server_kw))

    async def run() -> None:
        install_stop_signals(asyncio.get_running_loop(), server.stop)
        task = asyncio.create_task(server.run())
        await server.bound.wait()
        tmp = args.endpoint_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"endpoint": server.endpoint, "pid": os.getpid()}))
        os.replace(tmp, args.endpoint_file)
        await task

    asyncio.run(run())
    service.save_sessions()


if __name__ == "__main__":
    main()
