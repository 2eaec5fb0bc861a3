"""`pudding serve-ray` as a test fixture: Ray in a loopback-only namespace, 127.0.0.1:PORT.

The command itself makes the namespace (`unshare -n`, root; CI runs as root) and bridges
the port to Serve inside it, so tests talk HTTP to 127.0.0.1 as with `vllm serve`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from server_utils import HOST, SERVER_ENV, VllmServer, free_port


def skip_without_namespace() -> None:
    from vllm_pudding.serve_ray.netns import why_no_namespace

    reason = why_no_namespace()
    if reason is not None:
        pytest.skip(f"Ray tests need a loopback-only network namespace: {reason}")


class RayApp(VllmServer):
    """`pudding serve-ray MODEL --replicas N --options JSON -- VLLM_ARGS` logging to a file;
    waits until every replica answers /health. stop() is VllmServer's (SIGTERM, then the
    process group; the command shuts Ray down and kills what is left of it)."""

    def __init__(self, model: Path | str, log_path: Path, vllm_args: list[str],
                 replicas: int = 2, options: dict | None = None,
                 startup_timeout: float = 600.0):
        self.port = free_port()
        self.base_url = f"http://{HOST}:{self.port}"
        self.log_path = Path(log_path)
        cmd = [sys.executable, "-m", "vllm_pudding.cli", "serve-ray", str(model),
               "--replicas", str(replicas), "--port", str(self.port),
               "--options", json.dumps(options or {}), "--", *vllm_args]
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env={**os.environ, **SERVER_ENV},
                                     start_new_session=True)
        self.wait_healthy(startup_timeout)

    def get(self, path: str, timeout: float = 30.0) -> dict:
        resp = requests.get(f"{self.base_url}{path}", timeout=timeout)
        assert resp.status_code == 200, resp.text[:1000]
        return resp.json()

    def wait_for(self, predicate, timeout: float, what: str, path="/pudding/replicas"):
        """Polls `path` until predicate(json) holds; returns that json."""
        deadline = time.monotonic() + timeout
        while True:
            data = self.get(path)
            if predicate(data):
                return data
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not within {timeout:.0f} s; last {data}")
            time.sleep(0.05)
