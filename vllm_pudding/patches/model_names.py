"""Patch: `pudding/<name>` resolves wherever vLLM takes a model (`vllm_pudding/names.py`).

What: extends vLLM's model redirect (`maybe_model_redirect`, as `vllm.config.model`
calls it: the `VLLM_MODEL_REDIRECT_PATH` step of `ModelConfig`) with the pudding
names, and lets the two look-ups that `EngineArgs` runs before it, the offline
hub-cache probe (`arg_utils.get_model_path`) and the speculators probe
(`arg_utils.maybe_override_with_speculators`), pass a pudding name through; tokenizer
look-ups by name (`tokenizers.registry.cached_resolve_tokenizer_args`, which
`vllm bench throughput` / `vllm bench serve` call with `--model` before any engine
exists) get the dir too.
Why: vLLM's redirect is the right place (it runs after the served name is taken, so
clients keep using `pudding/<name>`, as with hub names), but vLLM applies it after
those probes, which ask the hub about the name: offline that fails, online it is a
404. A redirect file could not do it either: the dir is built on first use, and an
unknown name must fail with the list of known names instead of a hub error.
The probes are skipped only for `pudding/...` strings that are not local paths; the
name is resolved (and the dir built) in the first of them, once per process.
Removable when: vLLM applies model redirects before probing the hub, or offers a
plugin hook that resolves model names.
"""

from __future__ import annotations

from vllm_pudding.names import is_pudding_name, resolve
from vllm_pudding.patches import wrap


def apply() -> None:
    import vllm.config.model as model_config
    import vllm.engine.arg_utils as arg_utils
    import vllm.tokenizers.registry as tokenizers

    wrap(model_config, "maybe_model_redirect", _redirect)
    wrap(arg_utils, "get_model_path", _hub_cache_probe)
    wrap(arg_utils, "maybe_override_with_speculators", _speculators_probe)
    wrap(tokenizers, "cached_resolve_tokenizer_args", _tokenizer_args)


def _redirect(original):
    def maybe_model_redirect(model):
        return resolve(model) if is_pudding_name(model) else original(model)

    return maybe_model_redirect


def _hub_cache_probe(original):
    def get_model_path(model, revision=None):
        if is_pudding_name(model):
            resolve(model)  # fail early for an unknown name; the redirect hands out the dir
            return model
        return original(model, revision)

    return get_model_path


def _speculators_probe(original):
    def maybe_override_with_speculators(model, tokenizer, *args, **kwargs):
        if is_pudding_name(model):
            resolve(model)
            # A pudding dir is a plain decoder checkpoint, never a speculators one.
            return model, tokenizer, kwargs.get("vllm_speculative_config")
        return original(model, tokenizer, *args, **kwargs)

    return maybe_override_with_speculators


def _tokenizer_args(original):
    def cached_resolve_tokenizer_args(tokenizer_name, *args, **kwargs):
        if is_pudding_name(tokenizer_name):
            tokenizer_name = resolve(tokenizer_name)
        return original(tokenizer_name, *args, **kwargs)

    return cached_resolve_tokenizer_args
