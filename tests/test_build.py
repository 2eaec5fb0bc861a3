"""`pudding build` (vllm_pudding/build.py) end to end on a tiny random Llama, tiny settings.

The CLI runs twice as a user would: stopped after the pool step (an interruption), then
resumed. The resumed run must not search again (the pool file and every search
checkpoint untouched) and must finish with a servable pudding dir holding that pool and
the trained router. The engine of the labels step runs in-process
(VLLM_ENABLE_V1_MULTIPROCESSING=0) to start in seconds.
"""

import json
import sys
from pathlib import Path

import pytest

from server_utils import run_cli

TINY_ARGS = ["--k", "2", "--examples", "8", "--label-examples", "10", "--tasks",
             "piqa,arc_easy", "--workers", "1", "--eager", "--pool-size", "4", "--epochs", "20",
             "--dtype", "float32"]


def pudding_build(base: Path, out: Path, work: Path, log: Path, *extra: str) -> str:
    cmd = [sys.executable, "-m", "vllm_pudding.cli", "build", str(base), str(out),
           "--work-dir", str(work), *TINY_ARGS, *extra]
    return run_cli(cmd, log, env_extra={"VLLM_ENABLE_V1_MULTIPROCESSING": "0",
                                        "PUDDING_CACHE": str(work.parent / "cache")})


def _files(root: Path) -> dict[str, tuple[int, bytes]]:
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_build_interrupted_after_the_pool_then_resumed(tiny_base, tmp_path):
    from vllm_pudding.artifact import load_pudding_dir
    from vllm_pudding.router.spec import load_spec

    out, work = tmp_path / "tiny-pudding", tmp_path / "work"
    first = pudding_build(tiny_base, out, work, tmp_path / "first.log", "--stop-after", "pool")
    assert "[pool] running" in first and "labels  not run" in first
    assert not out.exists() and not (work / "labels.json").exists()
    searched = _files(work / "search")
    assert searched, "the pool search checkpoints into the work dir"
    pool_file = _files(work)["pool.json"]

    second = pudding_build(tiny_base, out, work, tmp_path / "second.log")
    assert "[pool] done before" in second and "[pool] running" not in second
    assert "has no router" not in second, "the labels engine is router-less by design"
    assert _files(work / "search") == searched
    assert _files(work)["pool.json"] == pool_file
    sets = [s["layers"] for s in json.loads(pool_file[1])["sets"]]
    assert len(sets) == 4 and all(len(s) == 2 for s in sets)

    pool = load_pudding_dir(out)
    assert pool.omission_sets == sets
    assert pool.router is not None and pool.router.kind == "hidden"
    load_spec(out / pool.router.path, sets)  # what the engine checks at start
    labels = json.loads((work / "labels.json").read_text())
    assert labels["split"] == "train" and labels["pool"] == sets
    assert [label for label in labels["runs"]][:4] == [f"set{i}" for i in range(4)]
    assert all(len(labels["examples"][f"set{i}"][t]) == 10 for i in range(4)
               for t in ("piqa", "arc_easy"))
    assert f"pudding dir: {out}" in second and "router (hidden" in second

    third = pudding_build(tiny_base, out, work, tmp_path / "third.log")
    assert all(f"[{step}] done before" in third for step in ("pool", "labels", "router", "dir"))


def test_pool_sources(tmp_path, tiny_pudding):
    from vllm_pudding.build import pool_document

    paper = pool_document("pudding/llama3.1-8b")
    assert len(paper["sets"]) == 10 and paper["num_layers"] == 32
    assert paper["source"]["repo"] == "https://github.com/tada0347/PuDDing"
    from_dir = pool_document(str(tiny_pudding))
    assert [s["layers"] for s in from_dir["sets"]] == load_sets(tiny_pudding)
    with pytest.raises(ValueError, match="known: pudding/smollm2-135m"):
        pool_document("pudding/nope")
    with pytest.raises(ValueError, match="no such file"):
        pool_document(str(tmp_path / "missing.json"))


def load_sets(pudding_dir):
    from vllm_pudding.artifact import load_pudding_dir

    return load_pudding_dir(pudding_dir).omission_sets


def test_build_gemma3_end_to_end(tiny_models, tmp_path):
    """Gemma 3 (sliding-window and full-attention layers: two KV cache groups) through
    every step in one run: the search on HF's Gemma layers with its masks, labels through
    the engine, the hidden router, the dir (serving Gemma dirs: test_engine_exactness)."""
    from vllm_pudding.artifact import load_pudding_dir

    out, work = tmp_path / "gemma-pudding", tmp_path / "work"
    log = pudding_build(tiny_models("gemma3").base, out, work, tmp_path / "gemma.log")
    assert "[pool] running" in log and f"pudding dir: {out}" in log
    pool = load_pudding_dir(out)
    assert len(pool.omission_sets) == 4 and all(len(s) == 2 for s in pool.omission_sets)
    assert all(0 not in s and 5 not in s for s in pool.omission_sets)
    assert pool.router is not None and pool.router.kind == "hidden"
