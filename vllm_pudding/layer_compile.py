"""torch.compile for each decoder layer's body, the per-row layer loop staying eager.

Why: vLLM compiles a stock model whole (one graph, attention as an opaque op), which
fuses norms, rotary, activation and residual adds and drops Python module overhead;
on a 2-core CPU that made dense vLLM 1.27x faster in decode than eager, and eager
PuDDing lost to it. PuDDing's layer loop picks rows per layer from the step's plan,
which no single graph can hold, but each layer's body (norm, qkv, rotary, attention
op, o_proj, norm, MLP) is the same code on every call: compiling that body gives the
fusions back while `LayerRunner` keeps choosing rows.

When: by default on CPU unless the user asked for eager mode (`enforce_eager=True` /
`--enforce-eager`); elsewhere only when asked. `--additional-config
'{"pudding_compile_layers": true|false}'` (or `LLM(..., additional_config={...})`)
overrides the default; eager mode always wins. Measured on the 2-core CPU (bf16, 5
alternated reps, benchmarks/results/dense_default.json): compiled over eager PuDDing,
prefill 1.31x, decode 1.18x; that made PuDDing 1.23x (prefill) and 1.13x (decode)
compiled dense vLLM, which eager PuDDing lost to (0.82x / 0.95x). Decode gained little: a
batch-16 layer call runs 2.0 ms in inductor's code against 2.5 ms eager, but dynamo's guard
check and wrappers added ~0.4 ms per call (cProfile); `CompiledForward` now drops the
guards (see its docstring). On a GPU without CUDA graphs that
per-call overhead could outweigh the fusion, and it is unmeasured (no vLLM on the GPU
machine), so it stays off there until measured.
`engine_config` still forces `enforce_eager=True` on vLLM (its whole-model compile
and CUDA graphs cannot capture the loop) after `resolve` has read the user's choice.
Shapes: the token dimension is marked unbacked on the call that compiles, so one compile
covers every batch size, 1 included (dynamo would otherwise specialise size 1, and a layer
seen first whole and then on a row subset would compile again); hidden sizes stay
static. `patches/compile_warmup.py` runs that one compile at engine start. Each layer gets its own copy of the forward's
code object: dynamo keeps its compiled entries and its recompile limit (8) per code
object, and every layer needs entries of its own (its attention layer name is a
constant of the graph), so one shared code object would run out after a few layers.
A layer whose compile fails falls back to eager for good, with a warning: a compile
error costs speed, never a request.
"""

from __future__ import annotations

import types

import torch
from vllm.logger import init_logger

logger = init_logger(__name__)

CONFIG_KEY = "pudding_compile_layers"
RESOLVED_KEY = "pudding_compile_layers_resolved"  # the user's ask, before eager is forced
# vLLM's own CPU inductor settings (platforms/cpu.py), so both compiles fuse alike.
CPU_INDUCTOR_OPTIONS = {"dce": True, "size_asserts": False, "nan_asserts": False,
                        "epilogue_fusion": True, "cpp.dynamic_threads": True}


def resolve(vllm_config) -> None:
    """Front end, before eager mode is forced, once: compile iff asked (default: on CPU)
    and the user did not ask for eager mode (the config hook may run again, after forcing)."""
    extra = vllm_config.additional_config
    if not isinstance(extra, dict) or RESOLVED_KEY in extra:
        return
    on_cpu = getattr(getattr(vllm_config, "device_config", None), "device_type", None) == "cpu"
    asked = extra.get(CONFIG_KEY, on_cpu)
    if not isinstance(asked, bool):
        raise ValueError(f"additional_config {CONFIG_KEY!r} must be true or false, got {asked!r}")
    extra[RESOLVED_KEY] = asked and not vllm_config.model_config.enforce_eager


def requested(vllm_config) -> bool:
    extra = vllm_config.additional_config
    return isinstance(extra, dict) and bool(extra.get(RESOLVED_KEY, False))


def compile_layers(layers, layer_cls: type, device_type: str) -> int:
    """Wraps the forward of every `layer_cls` instance; returns how many were wrapped."""
    kept = [(i, layer) for i, layer in enumerate(layers) if isinstance(layer, layer_cls)]
    options = CPU_INDUCTOR_OPTIONS if device_type == "cpu" else None
    for i, layer in kept:
        layer.forward = CompiledForward(_own_code(layer.forward, f"layer{i}"), options)
    return len(kept)


def _own_code(method, tag: str):
    """`method` rebound to a copy of its function with a code object of its own."""
    fn = method.__func__
    code = fn.__code__.replace(co_name=f"{fn.__code__.co_name}_{tag}")
    clone = types.FunctionType(code, fn.__globals__, code.co_name, fn.__defaults__,
                               fn.__closure__)
    clone.__kwdefaults__ = fn.__kwdefaults__
    return types.MethodType(clone, method.__self__)


def _residual_as_tensor(args) -> tuple:
    """The first layer's residual None -> zeros: the fused add-norm of hidden + 0 is the
    unfused first-layer step exactly (what `LayerRunner` already does for row subsets),
    and a layer seen with both would otherwise compile two graphs."""
    if len(args) >= 3 and args[2] is None:
        return (*args[:2], torch.zeros_like(args[1]), *args[3:])
    return args


def _mark_token_dim_unbacked(args) -> None:
    """(positions, hidden, residual): one graph for any token count, 1 included."""
    for t in args[:3]:
        if isinstance(t, torch.Tensor) and t.dim():
            torch._dynamo.decorators.mark_unbacked(t, 0)


def _input_kind(args, kwargs) -> tuple | None:
    """What the one compiled graph assumed of its inputs besides the token count: each
    tensor's dtype, device, rank and contiguity (inductor's code is specialised to
    contiguous strides, and size asserts are off); None when a non-tensor is passed."""
    if kwargs:
        return None
    kind = []
    for t in args:
        if not isinstance(t, torch.Tensor):
            return None
        kind.append((t.dtype, t.device, t.dim(), t.is_contiguous()))
    return tuple(kind)


class CompiledForward:
    """A layer's forward through torch.compile, eager again if compiling ever fails.

    Dispatch without guards, as vLLM's own compile wrapper does for whole models
    (`TorchCompileWithNoGuardsWrapper`: `guard_filter_fn=skip_all_guards_unsafe`): a
    layer has exactly one graph (token dimension unbacked, the first layer's residual
    made a tensor), so dynamo's per-call guard check over the layer's parameters and
    globals only re-proves what cannot change while serving. What can (the inputs' dtype,
    device, rank, contiguity) is checked here instead, in a few attribute reads; a call
    that differs from the compiled one runs eager (counted in `eager_calls`), never
    through a graph made for other inputs.

    Then, as vLLM's wrapper does with VLLM_USE_BYTECODE_HOOK, calls skip dynamo's frame
    evaluation too: the code dynamo made from the layer's forward (captured with
    `register_bytecode_hook` when the graph is compiled) runs as a plain function, with
    the forward's globals, defaults and closure (dynamo keeps the same arguments, cells
    and free variables). It calls the compiled graph directly; on the 2-core CPU the
    frame evaluation cost ~70 us of a ~1.3 ms batch-16 decode layer call (torch
    profiler, "Torch-Compiled Region"). Only when dynamo made one graph and no resume
    function (a graph break would leave the rest of the layer eager if called so) and
    the guards are skipped; otherwise calls go through `torch.compile` as before.
    `direct_calls` counts them.
    """

    def __init__(self, eager, options: dict | None):
        self.eager = eager
        options = dict(options or {})
        if hasattr(torch.compiler, "skip_all_guards_unsafe"):
            options["guard_filter_fn"] = torch.compiler.skip_all_guards_unsafe
            self.guarded = False
        else:  # older torch: dynamo keeps its guards, and the kind check is redundant
            self.guarded = True
        self.compiled = torch.compile(eager, options=options)
        self.kind = None  # the input kind the graph was compiled for, once traced
        self.eager_calls = 0
        self.direct = None  # dynamo's code for the forward as a plain bound function
        self.direct_calls = 0

    @property
    def traced(self) -> bool:
        return self.kind is not None

    def __call__(self, *args, **kwargs):
        if self.compiled is None:
            return self.eager(*args, **kwargs)
        args = _residual_as_tensor(args)
        if self.kind is not None:
            if self.guarded:
                return self.compiled(*args, **kwargs)
            if _input_kind(args, kwargs) == self.kind:
                if self.direct is not None:
                    self.direct_calls += 1
                    return self.direct(*args)
                return self.compiled(*args, **kwargs)
            self.eager_calls += 1
            return self.eager(*args, **kwargs)
        return self._compile(args, kwargs)

    def _compile(self, args, kwargs):
        """The first call: compiles the one graph, or falls back to eager for good."""
        kind = _input_kind(args, kwargs)
        if kind is None:
            self.eager_calls += 1
            return self.eager(*args, **kwargs)
        # Only the call that compiles needs the marks: the graph it makes has no guard
        # on the token dimension, so later calls of any size hit it unmarked. Marking
        # costs tens of microseconds a call (3 tensors), x every layer x every step.
        _mark_token_dim_unbacked(args)
        made = []
        hook = _capture_code(self.eager.__func__.__code__, made)
        try:
            out = self.compiled(*args, **kwargs)
        except torch._dynamo.exc.TorchDynamoException as e:  # includes backend failures
            logger.warning("vllm-pudding: layer compile failed, running it eager: %s", e)
            self.compiled = None
            return self.eager(*args, **kwargs)
        finally:
            if hook is not None:
                hook.remove()
        self.kind = kind
        if not self.guarded:
            self.direct = _direct_function(self.eager, made)
        return out


def _capture_code(code, made: list):
    """Collects into `made` the code dynamo makes from `code` (None: hook unavailable)."""
    register = getattr(torch._dynamo.convert_frame, "register_bytecode_hook", None)
    if register is None:
        return None

    def hook(old_code, new_code):
        if old_code is code:
            made.append(new_code)

    return register(hook)


def _direct_function(method, made: list):
    """`method` with dynamo's code for it, or None unless that code only calls one
    compiled graph (no resume functions after a graph break)."""
    if len(made) != 1:
        return None
    code = made[0]
    graphs = [n for n in code.co_names if n.startswith("__compiled_fn")]
    if len(graphs) != 1 or any(n.startswith("__resume") for n in code.co_names):
        return None
    fn = method.__func__
    if not all(n in fn.__globals__ for n in graphs):
        return None
    direct = types.FunctionType(code, fn.__globals__, fn.__name__, fn.__defaults__,
                                fn.__closure__)
    direct.__kwdefaults__ = fn.__kwdefaults__
    return types.MethodType(direct, method.__self__)
