"""The router artifact: `<pudding dir>/router/router.json` + `head.safetensors`.

Loading validates everything against the pudding dir's pool before the first
request, and every error names the file, so a missing or mismatched router fails
at engine start with a message instead of misrouting requests later.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

SPEC_FILE = "router.json"
HEAD_FILE = "head.safetensors"


class RouterSpec(BaseModel):
    """What a router reads, how its head is shaped, and which pool it was trained for."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["text", "hidden"] = Field(
        description="text: a separate encoder reads the prompt text; hidden: the head "
        "reads the base model's hidden states after `prefix_layers` layers.")
    omission_sets: list[list[int]] = Field(
        description="The pool the head scores, in set-id order; must equal the pudding "
        "dir's pool (a router trained for another pool is refused).")
    feature_dim: int = Field(gt=0, description="Width of the feature vector the head reads.")
    head_hidden: int = Field(gt=0, description="Hidden width of the two-layer MLP head.")
    max_tokens: int = Field(
        128, gt=0, description="Prompt tokens the router reads (the first ones); longer "
        "prompts are truncated for routing only, never for generation.")
    encoder: str | None = Field(
        None, description="text routers: encoder folder, relative to the router folder.")
    prefix_layers: int | None = Field(
        None, gt=0, description="hidden routers: layers 0..prefix_layers-1 (kept by every "
        "set) produce the features.")
    pooling: Literal["mean", "mean_last"] = Field(
        "mean", description="mean: mean over prompt tokens (L2-normalised for text); "
        "mean_last: [mean, last token] concatenated.")
    target: str = Field(description="Label the head regresses, e.g. 'choice_logprob'.")
    objective: Literal["mse", "soft"] = Field(description="Training loss of the head.")
    meta: dict[str, Any] = Field(
        default_factory=dict, description="Training provenance and held-out metrics.")

    def check(self, where: str) -> None:
        if self.kind == "text" and not self.encoder:
            raise ValueError(f"{where}: a text router needs 'encoder'")
        if self.kind == "hidden" and not self.prefix_layers:
            raise ValueError(f"{where}: a hidden router needs 'prefix_layers'")


def load_spec(router_dir: Path, omission_sets: list[list[int]] | None = None,
              check_encoder: bool = True) -> RouterSpec:
    """Reads and validates `router.json` (and that the head and encoder files exist)."""
    router_dir = Path(router_dir)
    spec_file = router_dir / SPEC_FILE
    if not spec_file.is_file():
        raise ValueError(f"{spec_file}: router spec missing (the pudding dir names a router "
                         "that is not there; rebuild it with `python -m vllm_pudding.router.train`)")
    try:
        spec = RouterSpec(**json.loads(spec_file.read_text()))
    except json.JSONDecodeError as e:
        raise ValueError(f"{spec_file}: not valid JSON ({e})") from None
    except (ValidationError, TypeError) as e:
        raise ValueError(f"{spec_file}: malformed router spec: {e}") from None
    spec.check(str(spec_file))
    if omission_sets is not None and [list(s) for s in omission_sets] != spec.omission_sets:
        raise ValueError(f"{spec_file}: trained for another pool ({len(spec.omission_sets)} "
                         f"sets) than the model's ({len(omission_sets)} sets); retrain it")
    if not (router_dir / HEAD_FILE).is_file():
        raise ValueError(f"{router_dir / HEAD_FILE}: router head weights missing")
    if check_encoder and spec.kind == "text" and not (router_dir / spec.encoder / "config.json").is_file():
        raise ValueError(f"{router_dir / spec.encoder / 'config.json'}: router encoder missing")
    return spec


def write_spec(router_dir: Path, spec: RouterSpec) -> Path:
    router_dir = Path(router_dir)
    router_dir.mkdir(parents=True, exist_ok=True)
    path = router_dir / SPEC_FILE
    path.write_text(json.dumps(spec.model_dump(), indent=1))
    return path
