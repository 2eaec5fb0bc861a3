"""``python -m vllm_pudding.search --k 7 --examples 128 --out ...`` (see `run.py`)."""

from vllm_pudding.search.run import main

if __name__ == "__main__":
    main()
