"""Zero-shot multiple-choice evaluation through vLLM (prompt log-probs, per-request sets).

    from vllm_pudding.eval import score_examples, evaluate_run, markdown_table
    scored = score_examples(llm, tokenizer, examples, sets=2)        # one generate call
    run = evaluate_run(llm, tokenizer, "set2", {"piqa": examples}, 2)  # metrics + intervals

CLI: ``python -m vllm_pudding.eval --help``.
"""

from vllm_pudding.eval.metrics import (ACC_NORM, INTERVAL, Estimate, accuracy, mean_of,
                                       normalized_scores, predict, wilson)
from vllm_pudding.eval.run import (RunResult, TaskResult, averages, evaluate_run,
                                   markdown_table, oracle_rows, results_json, task_result,
                                   timing_table)
from vllm_pudding.eval.scoring import (ScoredExample, ScoreStats, encode_pair,
                                       score_examples, set_chooser)

__all__ = [
    "ACC_NORM", "INTERVAL", "Estimate", "RunResult", "ScoreStats", "ScoredExample",
    "TaskResult", "accuracy", "averages", "encode_pair", "evaluate_run", "markdown_table",
    "mean_of", "normalized_scores", "oracle_rows", "predict", "results_json",
    "score_examples", "set_chooser", "task_result", "timing_table", "wilson",
]
