"""Committed router heads and specs, one folder per pool (see vllm_pudding.router)."""
