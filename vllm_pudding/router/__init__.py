"""Prompt routers: pick one omission set per prompt, once, before any omitted layer runs.

Two kinds share one head (`head.py`) and one artifact format (`spec.py`, the
`router/` folder of a pudding model dir):
- "text" (the paper's design): a small pretrained encoder (MiniLM-L6 by default) reads
  the prompt text; the head regresses one score per candidate set; argmax picks.
- "hidden" (beyond the paper): the head reads the base model's own hidden states after
  the prefix of layers every candidate keeps, so no second model or tokenizer is
  needed and the prefix is computed anyway (`hidden.py`).

`train.py` fits heads on per-candidate scores of train examples (`labels.py`), picks
the variant on a held-out part of the train data, and writes the artifact;
`runtime.py` loads it once per process and routes batches of prompts (the front-end
patch `patches/auto_routing.py` calls it for every request without a `pudding_set`).
"""
