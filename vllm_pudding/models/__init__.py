"""`Pudding<Arch>ForCausalLM`: vLLM models whose requests each run their own depth."""
