"""`vllm serve` plus the `openai` client: pinned and routed requests, streaming, the set.

Starts `vllm serve` on a pudding dir (127.0.0.1, a free port; stopped at the end), or
talks to a running server with `--url`. Then, with the official `openai` client:
- completions and chat, pinned (`extra_body={"vllm_xargs": {"pudding_set": 2}}`) and
  routed (no set: the dir's router picks it); each response carries the set:
  completions `pudding_sets` / `pudding_routed` (one per prompt), chat `pudding_set` /
  `pudding_routed`;
- the same, streamed: every completion chunk's choice, every chat chunk, carries them;
- a mistyped key (`pudding_sett`) is refused with HTTP 400 naming it;
- `/metrics` counts requests and tokens per set (`vllm:pudding_*`).

    .venv/bin/python examples/server_client.py                       # serves the default dir
    .venv/bin/python examples/server_client.py --url http://127.0.0.1:8000

`--enforce-eager` starts the server without compiling the layers (faster start).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager

HOST = "127.0.0.1"
QUESTION = "Question: Which gas do plants absorb from the air?\nAnswer:"


@contextmanager
def served(model: str, enforce_eager: bool, timeout: float = 600.0):
    """`vllm serve MODEL` on loopback, logging to a temp file; yields its base URL."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "vllm.entrypoints.cli.main", "serve", model, "--host", HOST,
           "--port", str(port), "--max-model-len", "1024", "--served-model-name", "pudding"]
    cmd += ["--enforce-eager"] if enforce_eager else []
    env = {"VLLM_CPU_KVCACHE_SPACE": "1", **os.environ}  # CPU vLLM needs a KV size
    log = tempfile.NamedTemporaryFile("wb", prefix="vllm-serve-", suffix=".log", delete=False)
    print(f"starting: {' '.join(cmd)}  (log: {log.name})", flush=True)
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://{HOST}:{port}"
    try:
        deadline = time.monotonic() + timeout
        while not _healthy(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"vllm serve did not come up; see {log.name}")
            time.sleep(1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def run(url: str, max_tokens: int) -> None:
    import openai

    client = openai.OpenAI(base_url=f"{url}/v1", api_key="EMPTY")
    model = client.models.list().data[0].id
    pin = {"vllm_xargs": {"pudding_set": 2}}
    ask = dict(model=model, max_tokens=max_tokens, temperature=0.0)

    for label, extra in (("pinned", pin), ("routed", None)):
        resp = client.completions.create(prompt=[QUESTION], extra_body=extra, **ask)
        print(f"completion, {label}: sets {resp.pudding_sets} routed {resp.pudding_routed}: "
              f"{resp.choices[0].text!r}")

    messages = [{"role": "user", "content": "Which gas do plants absorb from the air?"}]
    for label, extra in (("pinned", pin), ("routed", None)):
        resp = client.chat.completions.create(messages=messages, extra_body=extra, **ask)
        print(f"chat, {label}: set {resp.pudding_set} routed {resp.pudding_routed}: "
              f"{resp.choices[0].message.content!r}")

    text, seen = "", set()
    for chunk in client.completions.create(prompt=QUESTION, stream=True, **ask):
        for choice in chunk.choices:
            text += choice.text
            seen.add((choice.pudding_set, choice.pudding_routed))
    print(f"completion, streamed, routed: (set, routed) per chunk {sorted(seen)}: {text!r}")
    text, seen = "", set()
    for chunk in client.chat.completions.create(messages=messages, stream=True,
                                                extra_body=pin, **ask):
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            seen.add((chunk.pudding_set, chunk.pudding_routed))
    print(f"chat, streamed, pinned: (set, routed) per chunk {sorted(seen)}: {text!r}")

    try:
        client.completions.create(prompt=QUESTION, extra_body={"vllm_xargs": {"pudding_sett": 2}},
                                  **ask)
    except openai.BadRequestError as e:
        print(f"mistyped key: HTTP {e.status_code}: {e.body['message']}")

    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as resp:
        lines = resp.read().decode().splitlines()
    counted = [l for l in lines if l.startswith("vllm:pudding_requests_total") and
               not l.endswith(" 0.0")]
    print("metrics, requests per set so far:\n  " + "\n  ".join(counted))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running server (default: start one on --model)")
    parser.add_argument("--model", help="pudding model dir (default: the default pudding dir)")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--enforce-eager", action="store_true")
    args = parser.parse_args()
    if args.url:
        run(args.url, args.max_tokens)
        return
    from vllm_pudding.default_pudding import ensure_default_pudding_dir

    with served(args.model or str(ensure_default_pudding_dir()), args.enforce_eager) as url:
        run(url, args.max_tokens)


if __name__ == "__main__":
    main()
