"""`vllm_pudding.eval.parity`: the dense-parity comparison the converted models' tables use.

Oracle: the committed Qwen2.5-Coder-0.5B parity files (vLLM vs HF transformers, fp32,
n = 30 per task) agree on every prediction; a copy with one choice's log-prob moved must
show exactly that example as a disagreement and the size of the move.
"""

import copy
import gzip
import json
from pathlib import Path

import pytest

from vllm_pudding.eval.parity import load_examples, markdown, parity_rows

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks/results/eval/qwen25_coder_05b"


def test_committed_qwen_parity_holds():
    a = load_examples(RESULTS / "dense_vllm_fp32_n30.json.gz", "dense")
    b = load_examples(RESULTS / "dense_hf_fp32_n30.json.gz", "dense")
    rows = parity_rows(a, b)
    assert [r["n"] for r in rows] == [30] * 6
    assert all(r["same"] == 30 for r in rows)
    assert max(r["max_abs_logprob_diff"] for r in rows) < 1e-3
    assert "180/180" in markdown(rows, ("vLLM", "HF"))


def test_parity_sees_one_flipped_prediction(tmp_path):
    data = json.loads(gzip.decompress((RESULTS / "dense_hf_fp32_n30.json.gz").read_bytes()))
    moved = copy.deepcopy(data)
    ex = moved["examples"]["dense"]["arc_easy"][0]
    wrong = next(i for i in range(len(ex["logprobs"])) if i != ex["gold"])
    ex["logprobs"][wrong] = max(ex["logprobs"]) + 5.0  # now the predicted choice
    path = tmp_path / "moved.json"
    path.write_text(json.dumps(moved))
    rows = {r["task"]: r for r in parity_rows(
        load_examples(RESULTS / "dense_hf_fp32_n30.json.gz", "dense"),
        load_examples(path, "dense"))}
    assert rows["arc_easy"]["same"] == 29
    assert rows["arc_easy"]["max_abs_logprob_diff"] >= 5.0
    assert all(r["same"] == 30 for t, r in rows.items() if t != "arc_easy")


def test_parity_refuses_different_examples(tmp_path):
    data = json.loads(gzip.decompress((RESULTS / "dense_hf_fp32_n30.json.gz").read_bytes()))
    data["examples"]["dense"]["piqa"][3]["doc_id"] = "not-the-same"
    path = tmp_path / "other.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="piqa: the two files scored different examples"):
        parity_rows(load_examples(RESULTS / "dense_hf_fp32_n30.json.gz", "dense"),
                    load_examples(path, "dense"))
    with pytest.raises(ValueError, match="no per-example scores for run 'set0'"):
        load_examples(path, "set0")
