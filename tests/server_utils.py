"""Starting and stopping a `vllm serve` subprocess for tests (loopback only)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import requests

TESTS_DIR = Path(__file__).resolve().parent
HOST = "127.0.0.1"
SERVER_ENV = {"HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "VLLM_CPU_KVCACHE_SPACE": "1"}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def log_tail(path: Path, lines: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as e:
        return f"<no log: {e}>"


def run_cli(args, log: Path, env_extra: dict | None = None, timeout: float = 600,
            cwd: Path = TESTS_DIR) -> str:
    """Runs a command line as a user would (this suite's env, output to `log`), asserts it
    exited 0, and returns what it printed."""
    env = {**os.environ, **SERVER_ENV, **(env_extra or {})}
    with open(log, "wb") as f:
        rc = subprocess.run(args, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env=env, cwd=cwd, timeout=timeout).returncode
    assert rc == 0, f"{args[2:5]} failed ({rc}); log tail:\n{log_tail(log)}"
    return Path(log).read_text(errors="replace")


class VllmServer:
    """`python -m vllm.entrypoints.cli.main serve MODEL ...` logging to a file.

    The server runs in its own session (process group) so that teardown can
    also reach its engine-core child if a graceful SIGTERM does not end it.
    """

    def __init__(self, model: Path | str, log_path: Path, args: list[str],
                 startup_timeout: float | None = 180.0):
        """Launches the server; waits for /health unless startup_timeout is None."""
        self.port = free_port()
        self.base_url = f"http://{HOST}:{self.port}"
        self.log_path = Path(log_path)
        cmd = [sys.executable, "-m", "vllm.entrypoints.cli.main", "serve", str(model),
               "--host", HOST, "--port", str(self.port), *args]
        env = {**os.environ, **SERVER_ENV}
        self._log = open(self.log_path, "wb")  # a file, not a pipe: a full pipe blocks
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        if startup_timeout is not None:
            self.wait_healthy(startup_timeout)

    def wait_healthy(self, timeout: float = 180.0) -> None:
        """Polls /health; on failure stops the server and raises with the log tail."""
        try:
            self._poll_health(timeout)
        except BaseException:
            self.stop()
            raise

    def _poll_health(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vllm serve exited with code {self.proc.returncode} "
                                   f"before it was healthy; log tail:\n{log_tail(self.log_path)}")
            try:
                if requests.get(f"{self.base_url}/health", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(1.0)
        raise RuntimeError(f"vllm serve not healthy after {timeout:.0f} s; "
                           f"log tail:\n{log_tail(self.log_path)}")

    def post(self, path: str, body: dict, timeout: float = 60.0) -> requests.Response:
        return requests.post(f"{self.base_url}{path}", json=body, timeout=timeout)

    def stop(self, grace: float = 30.0) -> None:
        """SIGTERM the server, then SIGKILL its process group if anything is left."""
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=grace)
                except subprocess.TimeoutExpired:
                    pass
            try:  # the group holds only what this server started (engine core etc.)
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            self.proc.wait(timeout=10)
        finally:
            self._log.close()


def offline_refs(checkpoints: dict[int, Path], prompts: list[list[int]], max_tokens: int,
                 log_path: Path, timeout: float = 600.0) -> dict:
    """(key, prompt index) -> (greedy token ids, chosen-token logprobs) from stock vLLM."""
    return offline_run(checkpoints, prompts, max_tokens, log_path, timeout)[0]


def offline_run(checkpoints: dict[int, Path], prompts: list[list[int]], max_tokens: int,
                log_path: Path, timeout: float = 600.0) -> tuple[dict, dict]:
    """(refs, {key: KV capacity in tokens}): `offline_refs` plus each engine's capacity.

    Each prompt runs alone through `engines.engine(checkpoints[key])`. The
    engines run in a child Python with VLLM_ENABLE_V1_MULTIPROCESSING=0: an
    in-process engine starts in seconds instead of ~25 s on 2 cores, and the
    child's `enable_envs_cache()` cannot freeze this process's vLLM env vars.
    """
    log_path = Path(log_path)
    out_path = log_path.with_suffix(".json")
    spec = {"checkpoints": {str(k): str(v) for k, v in checkpoints.items()},
            "prompts": prompts, "max_tokens": max_tokens, "out": str(out_path)}
    env = {**os.environ, **SERVER_ENV, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    with open(log_path, "wb") as log:
        try:
            rc = subprocess.run([sys.executable, str(Path(__file__).resolve()), json.dumps(spec)],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, cwd=TESTS_DIR, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    if rc != 0:
        raise RuntimeError(f"offline reference run failed ({rc}); log tail:\n{log_tail(log_path)}")
    result = json.loads(out_path.read_text())
    refs = {(int(k), i): (tokens, lps) for k, i, tokens, lps in result["rows"]}
    return refs, {int(k): v for k, v in result["capacity"].items()}


def _offline_refs_main(spec: dict) -> None:
    from vllm.inputs import TokensPrompt

    from engines import engine, greedy, kv_capacity_tokens, tokens_and_logprobs

    rows, capacity = [], {}
    for key, path in spec["checkpoints"].items():
        with engine(path) as llm:
            capacity[key] = kv_capacity_tokens(llm)
            for i, ids in enumerate(spec["prompts"]):
                out = llm.generate([TokensPrompt(prompt_token_ids=ids)],
                                   greedy(spec["max_tokens"]), use_tqdm=False)[0]
                rows.append([key, i, *tokens_and_logprobs(out)])
    Path(spec["out"]).write_text(json.dumps({"rows": rows, "capacity": capacity}))


if __name__ == "__main__":
    _offline_refs_main(json.loads(sys.argv[1]))


def tiny_server_args(served_name: str) -> list[str]:
    """`vllm serve` flags matching tests/engines.py's offline settings (fp32, eager,
    64-token chunks, 64 MiB of KV), so online results compare with offline ones."""
    from engines import CHUNK_BUDGET, KV_BYTES

    return ["--dtype", "float32", "--max-model-len", "512", "--enforce-eager",
            "--max-num-batched-tokens", str(CHUNK_BUDGET), "--kv-cache-memory-bytes",
            str(KV_BYTES), "--served-model-name", served_name, "--seed", "0"]


@contextmanager
def tiny_server(model_dir, tmp_path_factory, name: str, extra_args=()):
    """`vllm serve model_dir` with tiny_server_args (served as `name`), stopped on exit."""
    log = tmp_path_factory.mktemp("server") / "vllm-serve.log"
    srv = VllmServer(model_dir, log, tiny_server_args(name) + list(extra_args))
    try:
        yield srv
    finally:
        srv.stop()


def greedy_completion(server, name: str, prompt, max_tokens: int, **extra):
    """POST a greedy /v1/completions request (token ids returned); asserts HTTP 200."""
    body = {"model": name, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0,
            "ignore_eos": True, "return_token_ids": True, **extra}
    resp = server.post("/v1/completions", body)
    assert resp.status_code == 200, resp.text[:2000]
    return resp


PUDDING_SERIES = "vllm:pudding_"


def pudding_metrics(server) -> dict[tuple, float]:
    """The vllm:pudding_* samples of /metrics: (sample name, sorted label items) -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    resp = requests.get(f"{server.base_url}/metrics", timeout=30)
    assert resp.status_code == 200, resp.text[:500]
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(resp.text) for s in family.samples
            if s.name.startswith(PUDDING_SERIES)}


def assert_per_set_metrics(server, name: str, bodies: list[dict], router: str | None,
                           num_sets: int, timeout: float = 10.0) -> dict:
    """Sends each one-prompt /v1/completions body in turn; /metrics must then have counted,
    per (set, routed) and summed over engines, exactly the requests and the prompt /
    generated tokens their responses report, and one routing-time observation per routed
    request.

    Returns the expected per-(set, routed) request counts (for the caller's own checks).
    """
    before = pudding_metrics(server)
    labels = {"model_name": name, "engine": "0"}
    for s in range(num_sets):  # every set's series exist before any request ran
        for routed in (["false", "true"] if router else ["false"]):
            key = ("vllm:pudding_requests_total",
                   tuple(sorted({**labels, "set": str(s), "routed": routed}.items())))
            assert key in before, f"missing series {key}; have {sorted(before)[:6]}"
    labels.pop("engine")  # summed over the engines (data parallel: each serves some)
    want: dict[tuple, list[int]] = {}
    for body in bodies:
        resp = server.post("/v1/completions", {"model": name, **body})
        assert resp.status_code == 200, resp.text[:1000]
        data = resp.json()
        (set_id,), (routed,) = data["pudding_sets"], data["pudding_routed"]
        row = want.setdefault((str(set_id), "true" if routed else "false"), [0, 0, 0])
        row[0] += 1
        row[1] += data["usage"]["prompt_tokens"]
        row[2] += data["usage"]["completion_tokens"]
    n_routed = sum(r[0] for (_, routed), r in want.items() if routed == "true")

    def delta(sample: str, extra: dict) -> float:
        return total(after, sample, extra) - total(before, sample, extra)

    def total(metrics: dict, sample: str, extra: dict) -> float:
        match = {**labels, **extra}.items()
        return sum(v for (n, key), v in metrics.items()
                   if n == sample and match <= dict(key).items())

    hist = {"router": router} if router else None
    deadline = time.monotonic() + timeout
    while True:  # vLLM records a step's stats right after handing out its outputs
        after = pudding_metrics(server)
        got = {k: [delta(f"vllm:pudding_{m}_total", {"set": k[0], "routed": k[1]})
                   for m in ("requests", "prompt_tokens", "generation_tokens")]
               for k in {(str(s), r) for s in range(num_sets) for r in ("false", "true")}}
        routed_count = delta("vllm:pudding_routing_time_seconds_count", hist) if hist else 0
        if (got == {k: want.get(k, [0, 0, 0]) for k in got} and routed_count == n_routed) \
                or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert got == {k: want.get(k, [0, 0, 0]) for k in got}, f"metrics {got} != sent {want}"
    assert routed_count == n_routed, f"{routed_count} routing observations, {n_routed} routed"
    if hist and n_routed:
        assert delta("vllm:pudding_routing_time_seconds_sum", hist) > 0
    return {k: v[0] for k, v in want.items()}
