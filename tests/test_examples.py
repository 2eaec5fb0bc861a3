"""The scripts in examples/ run as a user runs them, on the default model, with small
workloads (their own flags), and print what they promise.

Each runs in a child Python; offline ones with an in-process engine
(VLLM_ENABLE_V1_MULTIPROCESSING=0 starts in seconds instead of ~25 s on 2 cores),
server_client.py starts and stops its own `vllm serve` on 127.0.0.1.
"""

import re
import sys
import tempfile
from pathlib import Path

import pytest

from server_utils import run_cli

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run_example(name: str, *args: str, in_process: bool = True, timeout: float = 900) -> str:
    """The example run as a user runs it, from the repo root; what it printed."""
    env = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"} if in_process else {}
    with tempfile.TemporaryDirectory() as tmp:
        return run_cli([sys.executable, str(EXAMPLES / name), *args], Path(tmp) / "log",
                       env_extra=env, timeout=timeout, cwd=EXAMPLES.parent)


def test_offline_batch_reports_each_prompts_set():
    out = run_example("offline_batch.py", "--enforce-eager", "--max-tokens", "4",
                      "--num-prompts", "4")
    rows = re.findall(r"^\[set (\d+), (routed|pinned)\] omits \[[\d, ]+\]: ", out, re.M)
    # prompts 0 and 2 are left to the hidden router; 1 and 3 pin sets 0 and 1
    assert [how for _, how in rows] == ["routed", "pinned", "routed", "pinned"], out[-3000:]
    assert [int(s) for s, how in rows if how == "pinned"] == [0, 1]


def test_server_client_pinned_routed_streamed_and_refused():
    out = run_example("server_client.py", "--enforce-eager", "--max-tokens", "4",
                      in_process=False)
    expect = [r"^completion, pinned: sets \[2\] routed \[False\]: ",
              r"^completion, routed: sets \[\d+\] routed \[True\]: ",
              r"^chat, pinned: set 2 routed False: ",
              r"^chat, routed: set \d+ routed True: ",
              r"^completion, streamed, routed: \(set, routed\) per chunk \[\(\d+, True\)\]: ",
              r"^chat, streamed, pinned: \(set, routed\) per chunk \[\(2, False\)\]: ",
              r"^mistyped key: HTTP 400: .*unknown key 'pudding_sett'; known pudding keys: "
              r"pudding_set",
              # three requests pinned set 2 (completion, chat, streamed chat)
              r'^  vllm:pudding_requests_total\{.*routed="false",set="2"\} 3\.0$']
    for pattern in expect:
        assert re.search(pattern, out, re.M), f"no line matching {pattern!r} in:\n{out[-3000:]}"


def test_bench_vs_dense_prints_ratios():
    out = run_example("bench_vs_dense.py", "--reps", "1", "--prompts", "2", "--prompt-len", "16",
                      "--max-tokens", "4")
    ratios = dict(re.findall(r"^  (\S.*?(?:prefill|decode))\s+([\d.]+)  \(", out, re.M))
    assert set(ratios) == {f"{c} vs dense, {w}" for c in ("one set", "mixed")
                           for w in ("prefill", "decode")}, out[-3000:]
    assert all(float(r) > 0 for r in ratios.values())
