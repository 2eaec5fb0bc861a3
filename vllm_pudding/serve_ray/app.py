"""The Ray Serve application: engine replicas, routing workers and the ingress, from one config.

    serve run vllm_pudding.serve_ray.app:app_builder model=DIR replicas=2   (inside `unshare -n`)
    pudding serve-ray DIR --replicas 2 --port 8000 -- --dtype float32 ...  (does that for you)

`app_builder(args)` is what `serve run` / a Serve config file's `import_path` calls
(examples/ray_serve_config.yaml); `RayAppConfig` holds and validates every option.
Each replica is its own deployment of one engine: one runtime_env per deployment is what
lets each replica be pinned to its own cores (CPU) and lets the ingress address a replica
directly; Serve still restarts each one when it dies. `routing="serve"` builds the
set-blind baseline instead: one deployment of N replicas, which Serve's own default request
router (power of two choices on queue length) spreads requests over; each replica then pins
itself by its Serve rank.
"""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class RayAppConfig(BaseModel):
    """Options of `pudding serve-ray` and of the Serve config's `args`."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="The pudding dir every replica serves.")
    replicas: int = Field(2, ge=1, description="Engine replicas (one deployment each).")
    vllm_args: list[str] = Field(
        default_factory=list, description="`vllm serve` flags for every replica (dtype, "
        "max model len, KV size, served model name, ...).")
    cores_per_replica: int = Field(
        1, ge=1, description="CPU only: cores each replica is pinned to (replica i gets the "
        "i-th block, wrapping around the machine's cores).")
    gpus_per_replica: float | None = Field(
        None, ge=0, description="GPUs per replica; None: 1 when this machine has a GPU, "
        "else 0 (CPU engines).")
    router_gpus: float = Field(0.0, ge=0, description="GPUs per routing worker.")
    router_min_workers: int = Field(1, ge=1, description="Autoscaling lower bound.")
    router_max_workers: int = Field(2, ge=1, description="Autoscaling upper bound.")
    router_target_ongoing: int = Field(
        32, ge=1, description="Autoscaling target: routing calls in flight per worker.")
    router_batch_size: int = Field(32, ge=1, description="Prompts per router call at most.")
    router_batch_wait_s: float = Field(
        0.002, ge=0, description="How long a routing worker waits to fill a batch.")
    route_timeout_s: float = Field(
        10.0, gt=0, description="A routing call slower than this is retried.")
    route_retries: int = Field(
        2, ge=0, description="Routing-worker attempts before the ingress routes itself.")
    max_resends: int = Field(3, ge=0, description="Resends of a request whose replica fails.")
    unavailable_wait_s: float = Field(
        20.0, ge=0, description="How long a request waits for a replica to come up before "
        "its answer is 503 (with Retry-After).")
    retry_after_s: int = Field(5, ge=1, description="The 503's Retry-After header.")
    max_ongoing_requests: int = Field(
        256, ge=1, description="Requests a replica accepts at once (Serve's default, 5, "
        "would queue what the engine's continuous batch should hold).")
    dispatch: dict[str, Any] = Field(
        default_factory=dict, description="`DispatchOptions` of the set-affine policy.")
    routing: Literal["affine", "serve"] = Field(
        "affine", description="affine: each replica its own deployment and the ingress picks "
        "one by the set-affine policy (dispatch/policy.py). serve: the replicas are one "
        "deployment and Ray Serve's default request router (power of two choices, set-blind) "
        "picks, for a baseline (benchmarks/bench_dispatch.py); the ingress still decides "
        "each request's set and resends on a replica failure, and /pudding/replicas shows "
        "no groups, only the replicas one round of calls reached.")

    @field_validator("model")
    @classmethod
    def _model_is_a_pudding_dir(cls, value: str) -> str:
        from pathlib import Path

        from vllm_pudding.artifact import load_pudding_dir

        load_pudding_dir(Path(value))  # ValueError naming the file
        return str(Path(value).resolve())


def replica_cores(index: int, per_replica: int, total: int | None = None) -> list[int]:
    """Cores of replica `index`: its block of `per_replica`, wrapping around the machine."""
    total = total or os.cpu_count() or 1
    return [(index * per_replica + j) % total for j in range(per_replica)]


def _gpus(config: RayAppConfig) -> float:
    if config.gpus_per_replica is not None:
        return config.gpus_per_replica
    try:
        import torch

        return 1.0 if torch.cuda.is_available() else 0.0
    except ImportError:
        return 0.0


def build_app(config: RayAppConfig):
    """The bound Serve application (ingress on top)."""
    from ray import serve

    from vllm_pudding.serve_ray.ingress import Ingress
    from vllm_pudding.serve_ray.replica import EngineReplica
    from vllm_pudding.serve_ray.routing import RoutingWorker

    gpus = _gpus(config)
    replicas = _replica_deployments(config, gpus, serve.deployment(EngineReplica))
    router = None
    if _has_router(config.model):
        router = serve.deployment(RoutingWorker).options(
            name="router", max_ongoing_requests=4 * config.router_batch_size,
            autoscaling_config={"min_replicas": config.router_min_workers,
                                "max_replicas": config.router_max_workers,
                                "target_ongoing_requests": config.router_target_ongoing},
            ray_actor_options={"num_cpus": 0, "num_gpus": config.router_gpus},
        ).bind(config.model, config.router_batch_size, config.router_batch_wait_s)
    options = config.model_dump(include={"route_timeout_s", "route_retries", "max_resends",
                                         "unavailable_wait_s", "retry_after_s", "dispatch",
                                         "routing", "replicas"})
    return Ingress.options(name="ingress", max_ongoing_requests=100_000).bind(
        replicas, router, config.model, options)


def _replica_deployments(config: RayAppConfig, gpus: float, deployment) -> list:
    """One bound deployment per replica (affine), or one of N replicas (serve)."""
    common = dict(max_ongoing_requests=config.max_ongoing_requests, health_check_period_s=2,
                  health_check_timeout_s=30)
    if config.routing == "serve":  # each replica pins itself by its Serve rank
        return [deployment.options(
            name="replicas", num_replicas=config.replicas, **common,
            ray_actor_options={"num_cpus": 0, "num_gpus": gpus},
        ).bind(config.model, config.vllm_args, None, None,
               0 if gpus else config.cores_per_replica)]
    out = []
    for i in range(config.replicas):
        cores = None if gpus else replica_cores(i, config.cores_per_replica)
        env = {} if cores is None else {"VLLM_CPU_OMP_THREADS_BIND": ",".join(map(str, cores))}
        out.append(deployment.options(
            name=f"replica{i}", num_replicas=1, **common,
            ray_actor_options={"num_cpus": 0, "num_gpus": gpus,
                               "runtime_env": {"env_vars": env}},
        ).bind(config.model, config.vllm_args, i, cores))
    return out


def _has_router(model: str) -> bool:
    from pathlib import Path

    from vllm_pudding.artifact import load_pudding_dir

    return load_pudding_dir(Path(model)).router is not None


def app_builder(args: dict[str, Any]):
    """`serve run` / Serve config entry point: `args` are `RayAppConfig` fields."""
    return build_app(RayAppConfig(**args))
