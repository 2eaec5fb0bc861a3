"""The typed `pudding` section of a pudding model dir's config.json.

One validated object is the single source of truth for the pool: the front end
checks request set ids against it, the model builds only the layers it needs,
and the runner turns set ids into per-layer row masks. Every check raises
`ValueError` naming the offending field, so a malformed artifact fails at load
with a message, never later inside a forward pass.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

SECTION = "pudding"
"""Key of the pudding section inside config.json (and attribute on the HF config)."""

SET_ARG = "pudding_set"
"""`SamplingParams.extra_args` / `vllm_xargs` key that pins a request's set id."""

ROUTE_ARG = "pudding_route"
"""extra_args key the front end sets on requests the in-engine (hidden) router decides."""

ROUTED_ARG = "pudding_routed"
"""extra_args key the front end sets on requests whose set a router chose (outputs report it)."""

ROUTE_SECONDS_ARG = "pudding_route_seconds"
"""extra_args key the front end sets with the duration of the text-router call that chose
the request's set (the routing-time metric reads it)."""

CLIENT_ARGS = (SET_ARG,)
"""The `pudding_*` keys a caller may set; every other `pudding_*` key is refused."""

INTERNAL_ARGS = (ROUTE_ARG, ROUTED_ARG, ROUTE_SECONDS_ARG)
"""Keys vllm-pudding sets itself after admission; a caller sending one is refused, since it
would fake the routing decision that outputs and metrics report."""


class RouterRef(BaseModel):
    """Where the pudding dir's router lives; requests without a `pudding_set` use it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(description="Router folder, relative to the pudding model dir "
                      "(holds router.json and head.safetensors).")
    kind: Literal["text", "hidden"] = Field(
        description="text: separate prompt encoder; hidden: base-model prefix states.")


class PuddingConfig(BaseModel):
    """Candidate omission sets and how requests choose among them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    omission_sets: list[list[int]] = Field(
        description="Candidate omission sets: each a sorted list of distinct 0-based "
        "layer indices that a request routed to it skips; all of the same size k "
        "(k = 0, the empty set, is valid)."
    )
    default_set: int = Field(
        0, description="Set id used by requests that name none (until a router decides)."
    )
    router: RouterRef | None = Field(
        None, description="The router that picks a set for requests that name none; "
        "None: they get `default_set`. Written by `python -m vllm_pudding.router.train`."
    )
    provisional: bool = Field(
        False, description="True when the pool is a stand-in, not the calibrated pool search."
    )
    routable_sets: list[int] | None = Field(
        None, description="Set ids a router may choose (None: every set). The others stay "
        "valid for an explicit `pudding_set`, but their free generation broke in the "
        "generation-sanity check (`python -m vllm_pudding.eval.sanity`), so no request is "
        "sent there unasked. Must include `default_set`."
    )

    @classmethod
    def parse(cls, section: Any, num_layers: int) -> "PuddingConfig":
        """Validates a raw `pudding` section against a model with `num_layers` layers."""
        if not isinstance(section, dict):
            raise ValueError(
                f"config.json '{SECTION}' must be an object, got {type(section).__name__}"
            )
        try:
            cfg = cls(**section)
        except ValidationError as e:
            fields = ", ".join(".".join(map(str, err["loc"])) for err in e.errors())
            raise ValueError(f"malformed '{SECTION}' section (fields: {fields}): {e}") from None
        cfg.check(num_layers)
        return cfg

    def check(self, num_layers: int) -> None:
        """Raises ValueError naming the field when the pool does not fit the model."""
        if not self.omission_sets:
            raise ValueError(f"{SECTION}.omission_sets: the pool is empty")
        sizes = {len(s) for s in self.omission_sets}
        if len(sizes) != 1:
            raise ValueError(f"{SECTION}.omission_sets: sets differ in size {sorted(sizes)}")
        for i, s in enumerate(self.omission_sets):
            _check_set(f"{SECTION}.omission_sets[{i}]", s, num_layers)
        if not 0 <= self.default_set < len(self.omission_sets):
            raise ValueError(
                f"{SECTION}.default_set: {self.default_set} is not a set id "
                f"(0..{len(self.omission_sets) - 1})"
            )
        if self.routable_sets is not None:
            self._check_routable()

    def _check_routable(self) -> None:
        ids, n = self.routable_sets, len(self.omission_sets)
        if not ids or ids != sorted(set(ids)) or not all(0 <= i < n for i in ids):
            raise ValueError(f"{SECTION}.routable_sets: {ids} must be sorted, distinct set ids "
                             f"of this pool (0..{n - 1}), at least one")
        if self.default_set not in ids:
            raise ValueError(f"{SECTION}.routable_sets: {ids} must include default_set "
                             f"{self.default_set}")

    @property
    def k(self) -> int:
        return len(self.omission_sets[0])

    def omitted_by_all(self) -> set[int]:
        """Layers no candidate keeps: never built, never loaded, no KV."""
        sets = [set(s) for s in self.omission_sets]
        return set.intersection(*sets)

    def kept_mask(self, num_layers: int) -> list[list[bool]]:
        """kept[set_id][layer] is True when that set runs that layer."""
        omitted = [set(s) for s in self.omission_sets]
        return [[l not in o for l in range(num_layers)] for o in omitted]

    def resolve_set_id(self, value: Any) -> int:
        """Turns a request's `pudding_set` value into a valid set id or raises."""
        if value is None:
            return self.default_set
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError(f"{SET_ARG} must be an integer set id, got {value!r}")
        try:
            sid = int(value)
        except ValueError:
            raise ValueError(f"{SET_ARG} must be an integer set id, got {value!r}") from None
        if float(value) != sid or not 0 <= sid < len(self.omission_sets):
            raise ValueError(
                f"{SET_ARG}={value!r} is not a set id of this pool "
                f"(0..{len(self.omission_sets) - 1})"
            )
        return sid

    def to_section(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


def _check_set(field: str, layers: list[int], num_layers: int) -> None:
    if list(layers) != sorted(layers):
        raise ValueError(f"{field}: layer indices must be sorted, got {layers}")
    if len(set(layers)) != len(layers):
        raise ValueError(f"{field}: duplicate layer indices in {layers}")
    bad = [l for l in layers if not 0 <= l < num_layers]
    if bad:
        raise ValueError(f"{field}: layer indices {bad} out of range 0..{num_layers - 1}")
    if len(layers) >= num_layers:
        raise ValueError(f"{field}: omits every layer of the model")


def from_hf_config(hf_config: Any) -> PuddingConfig | None:
    """The validated pudding section of an HF/vLLM config, or None for plain models."""
    section = getattr(hf_config, SECTION, None)
    if section is None:
        return None
    cached = getattr(hf_config, _PARSED_ATTR, None)
    if cached is not None and cached[0] is section:
        return cached[1]
    cfg = PuddingConfig.parse(section, hf_config.num_hidden_layers)
    # Parsed once per config object: the front end consults it for every request.
    object.__setattr__(hf_config, _PARSED_ATTR, (section, cfg))
    return cfg


_PARSED_ATTR = "_pudding_parsed"
