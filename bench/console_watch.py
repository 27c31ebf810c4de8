"""A console client held open during a bench run: the issue's "full stack with a console
client connected" condition.

`python -m bench --systems bench/systems-console.yaml` runs it as the setup step of the
system `turnout-full-console` (turnout-full.yaml plus a console user). That step runs
after the harness wrote the system's config and before it starts the gateway, pinned
to the harness's core, so this:
1. appends a `console:` section with one read-only user to the config (`--config`);
2. starts itself again, detached (the harness waits for setup steps to end), which waits
   for the gateway, logs in, and keeps `/console/api/live` open, reading a frame a
   second, until the gateway goes away (or `--max-s`); frames counted in `--log`.

Standard library only: it runs with any `python3`, away from the gateway's virtualenv.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from urllib.parse import urlsplit

KEY = "bench-console-watcher-key-0123456789abcdef"  # 32+ characters, as the config wants


def add_user(config: str) -> None:
    with open(config, "a", encoding="utf-8") as f:
        f.write(f"\nconsole:\n  users:\n    - {{name: bench, key: {KEY}, role: read-only}}\n")


def login(host: str, port: int, deadline: float) -> str:
    """The session cookie, once the gateway answers."""
    while True:
        try:
            conn = http.client.HTTPConnection(host, port, timeout=5)
            conn.request("POST", "/console/api/login", json.dumps({"key": KEY}),
                         {"content-type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                raise RuntimeError(f"login refused: {resp.status}")
            return (resp.getheader("set-cookie") or "").split(";", 1)[0]
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def watch(url: str, log: str, max_s: float) -> int:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    deadline = time.monotonic() + max_s
    frames = 0
    with open(log, "a", encoding="utf-8") as out:
        cookie = login(host, port, time.monotonic() + 120)
        out.write(f"{time.strftime('%H:%M:%S')} logged in; streaming\n")
        out.flush()
        conn = http.client.HTTPConnection(host, port, timeout=10)
        conn.request("GET", "/console/api/live", headers={"cookie": cookie})
        resp = conn.getresponse()
        try:
            while time.monotonic() < deadline:
                line = resp.readline()
                if not line:
                    break  # the gateway stopped
                if line.startswith(b"event: frame"):
                    frames += 1
                    if frames % 10 == 0:
                        out.write(f"{time.strftime('%H:%M:%S')} {frames} frames\n")
                        out.flush()
        except OSError as err:
            out.write(f"stream ended: {err}\n")
        out.write(f"{time.strftime('%H:%M:%S')} done: {frames} frames\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.console_watch", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", required=True, help="the gateway's root, e.g. http://127.0.0.1:8080")
    p.add_argument("--config", help="add the console user to this config, then detach")
    p.add_argument("--log", default="console-watch.log")
    p.add_argument("--max-s", type=float, default=3600, help="stop after this long anyway")
    a = p.parse_args(argv)
    if a.config is None:
        return watch(a.url, a.log, a.max_s)
    add_user(a.config)
    with open(os.devnull, "rb") as null, open(a.log, "ab") as log:
        subprocess.Popen([sys.executable, "-m", "bench.console_watch", "--url", a.url,
                          "--log", a.log, "--max-s", str(a.max_s)],
                         stdin=null, stdout=log, stderr=subprocess.STDOUT,
                         start_new_session=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
