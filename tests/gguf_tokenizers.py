"""Reference tokenizers read straight from a GGUF's vocabulary (and merges or scores).

Why: the converted checkpoints' tokenizer.json is built by transformers' GGUF converter;
checking it against that converter proves nothing. These follow llama.cpp's own algorithms
(llama-vocab.cpp), written afresh; in both, control and user-defined tokens are matched
whole first (`parse_special=True`), longest first.
- `GGUFBPE` (`tokenizer.ggml.model` "gpt2", `llm_tokenizer_bpe`): the rest is split by the
  pre-tokenizer regexes llama.cpp applies for the file's `tokenizer.ggml.pre` (each regex
  splits the pieces of the one before, keeping what it does not match), mapped to the GPT-2
  byte alphabet and merged pair by pair, lowest merge rank first.
- `GGUFSPM` ("llama": SentencePiece vocabularies such as Gemma's, `llm_tokenizer_spm`):
  spaces become U+2581, characters are merged pair by pair, the pair whose joined text is the
  highest-scoring token first (ties: leftmost); what no token covers falls back to <0xXX>
  byte tokens.
llama.cpp itself is the stronger oracle where `llama_cpp` is installed
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


def reference_tokenizer(reader):
    """The reference for a GGUF (`reader`: its `gguf.GGUFReader`, llama.cpp's own reader)."""
    kind = reader.fields["tokenizer.ggml.model"].contents()
    if kind not in ("gpt2", "llama"):
        raise ValueError(f"no reference tokenizer for tokenizer.ggml.model {kind!r}")
    return GGUFBPE(reader) if kind == "gpt2" else GGUFSPM(reader)


class _Whole:
    """Control and user-defined tokens matched whole; `encode` runs `_pieces` between them."""

    def __init__(self, reader):
        fields = reader.fields
        tokens = fields["tokenizer.ggml.tokens"].contents()
        types = fields["tokenizer.ggml.token_type"].contents()
        self.ids = {t: i for i, t in enumerate(tokens)}
        whole = sorted((t for t, k in zip(tokens, types) if k in (CONTROL, USER_DEFINED)),
                       key=len, reverse=True)
        self.whole = regex.compile("|".join(map(regex.escape, whole))) if whole else None

    def _pieces(self, text: str) -> list[int]:
        raise NotImplementedError

    def encode(self, text: str) -> list[int]:
        out, pos = [], 0
        matches = list(self.whole.finditer(text)) if self.whole else []
        for m in [*matches, None]:
            end = m.start() if m else len(text)
            if end > pos:
                out += self._pieces(text[pos:end])
            if m:
                out.append(self.ids[m.group()])
                pos = m.end()
        return out


class GGUFSPM(_Whole):
    """`encode(text)` as llama.cpp tokenizes a SentencePiece vocabulary (no BOS)."""

    def __init__(self, reader):
        super().__init__(reader)
        fields = reader.fields
        self.scores = fields["tokenizer.ggml.scores"].contents()
        prefix = fields.get("tokenizer.ggml.add_space_prefix")
        self.space_prefix = bool(prefix.contents()) if prefix is not None else True
        self.first = True

    def encode(self, text: str) -> list[int]:
        self.first = True
        return super().encode(text)

    def _pieces(self, text: str) -> list[int]:
        if self.space_prefix and self.first:
            text = " " + text
        self.first = False
        symbols = list(text.replace(" ", "\u2581"))
        while len(symbols) > 1:
            best = None
            for i in range(len(symbols) - 1):
                tid = self.ids.get(symbols[i] + symbols[i + 1])
                if tid is not None and (best is None or self.scores[tid] > best[0]):
                    best = (self.scores[tid], i)
            if best is None:
                break
            i = best[1]
            symbols[i:i + 2] = [symbols[i] + symbols[i + 1]]
        out = []
        for s in symbols:
            tid = self.ids.get(s)
            out += [tid] if tid is not None else [self.ids[f"<0x{b:02X}>"] for b in s.encode()]
        return out


class GGUFBPE(_Whole):
    """`encode(text)` as llama.cpp tokenizes a byte-level BPE vocabulary (no BOS)."""

    def __init__(self, reader):
        super().__init__(reader)
        fields = reader.fields
        self.ranks = {tuple(m.split(" ", 1)): r
                      for r, m in enumerate(fields["tokenizer.ggml.merges"].contents())}
        self.splits = PRE_SPLITS[fields["tokenizer.ggml.pre"].contents()]

    def _pieces(self, text: str) -> list[int]:
        return [t for piece in _split(text, self.splits) for t in self._bpe(piece)]

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
