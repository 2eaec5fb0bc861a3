"""A reference tokenizer read straight from a GGUF's byte-level BPE vocabulary and merges.

Why: the converted checkpoints' tokenizer.json is built by transformers' GGUF converter;
checking it against that converter proves nothing. This follows llama.cpp's own algorithm
(llama-vocab.cpp, `llm_tokenizer_bpe`) written afresh: control tokens are matched whole
(`special=True`), the rest is split by the pre-tokenizer regexes llama.cpp applies for the
file's `tokenizer.ggml.pre` (each regex splits the pieces of the one before, keeping what it
does not match), mapped to the GPT-2 byte alphabet and merged pair by pair, lowest merge
rank first. llama.cpp itself is the stronger oracle where `llama_cpp` is installed
(test_offline_models.py uses both).
"""

from __future__ import annotations

from functools import lru_cache

import regex

_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_QWEN2 = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+"
          r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
PRE_SPLITS = {"qwen2": (_QWEN2,), "smollm": (r"\p{N}", _GPT2), "gpt2": (_GPT2,)}
"""llama.cpp's regexes per `tokenizer.ggml.pre` (llama-vocab.cpp, LLAMA_VOCAB_PRE_TYPE_*)."""
CONTROL, USER_DEFINED = 3, 4


@lru_cache(maxsize=1)
def _byte_alphabet() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
            *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {b: chr(b) for b in keep}, 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def _split(text: str, patterns: tuple[str, ...]) -> list[str]:
    pieces = [text]
    for pattern in patterns:
        out = []
        for piece in pieces:
            pos = 0
            for m in regex.finditer(pattern, piece):
                if m.start() > pos:
                    out.append(piece[pos:m.start()])
                out.append(m.group())
                pos = m.end()
            if pos < len(piece):
                out.append(piece[pos:])
        pieces = out
    return pieces


class GGUFBPE:
    """`encode(text)` as llama.cpp tokenizes with `add_special=False, parse_special=True`."""

    def __init__(self, reader):
        """`reader`: the file's `gguf.GGUFReader` (llama.cpp's own Python reader)."""
        fields = reader.fields
        if fields["tokenizer.ggml.model"].contents() != "gpt2":
            raise ValueError(f"{gguf} is not a byte-level BPE vocabulary")
        tokens = fields["tokenizer.ggml.tokens"].contents()
        types = fields["tokenizer.ggml.token_type"].contents()
        self.ids = {t: i for i, t in enumerate(tokens)}
        self.ranks = {tuple(m.split(" ", 1)): r
                      for r, m in enumerate(fields["tokenizer.ggml.merges"].contents())}
        whole = sorted((t for t, k in zip(tokens, types) if k in (CONTROL, USER_DEFINED)),
                       key=len, reverse=True)
        self.whole = regex.compile("|".join(map(regex.escape, whole))) if whole else None
        self.splits = PRE_SPLITS[fields["tokenizer.ggml.pre"].contents()]

    def _bpe(self, piece: str) -> list[int]:
        alphabet = _byte_alphabet()
        word = [alphabet[b] for b in piece.encode("utf-8")]
        while len(word) > 1:
            ranked = [(self.ranks.get(pair, 1 << 62), i)
                      for i, pair in enumerate(zip(word, word[1:]))]
            rank, i = min(ranked)
            if rank == 1 << 62:
                break
            word[i:i + 2] = [word[i] + word[i + 1]]
        return [self.ids[symbol] for symbol in word]

    def encode(self, text: str) -> list[int]:
        out, pos = [], 0
        matches = list(self.whole.finditer(text)) if self.whole else []
        for m in [*matches, None]:
            end = m.start() if m else len(text)
            for piece in _split(text[pos:end], self.splits) if end > pos else ():
                out += self._bpe(piece)
            if m:
                out.append(self.ids[m.group()])
                pos = m.end()
        return out
