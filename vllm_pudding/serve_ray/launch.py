"""`pudding serve-ray`: Ray + Serve in a loopback-only namespace, reachable on 127.0.0.1:PORT.

    pudding serve-ray DIR --replicas 2 --port 8000 -- --dtype bfloat16 --max-model-len 2048

The command (outside) checks that a loopback-only network namespace can be made (root:
`unshare -n`), starts this module inside one, and bridges 127.0.0.1:PORT of the host to
Serve's HTTP proxy inside (netns.py). Inside, `ray.init` gets 127.0.0.1, include_dashboard=False,
and a small object store; Serve listens on 127.0.0.1. Started in a namespace already
loopback-only, it runs Ray right there. Where no such namespace can be made the command
refuses, unless `--host-network` accepts Ray's listening on every interface.
SIGTERM / Ctrl-C shut Serve and Ray down.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from vllm_pudding.serve_ray import netns
from vllm_pudding.serve_ray.app import RayAppConfig

INNER_PORT = 8000  # inside the private namespace nothing else can hold it
OBJECT_STORE_BYTES = 128 * 1024 * 1024


def serve_ray(config: RayAppConfig, port: int, host_network: bool = False) -> int:
    """Runs until interrupted; returns the exit code."""
    if netns.loopback_only():
        return run_inside(config, None, port)
    reason = netns.why_no_namespace()
    if reason is not None:
        if not host_network:
            raise SystemExit(f"pudding serve-ray: Ray must run in a loopback-only network "
                             f"namespace here, and none can be made: {reason}. Run as root, "
                             "or pass --host-network to let Ray listen on this host's "
                             "interfaces.")
        print(f"pudding serve-ray: WARNING: no loopback-only namespace ({reason}); Ray "
              "runs on the host network", file=sys.stderr, flush=True)
        return run_inside(config, None, port, allow_host_network=True)
    with tempfile.TemporaryDirectory(prefix="pudding-ray-") as tmp:
        sock = str(Path(tmp) / "serve.sock")
        inner = subprocess.Popen(netns.loopback_command(
            [sys.executable, "-m", "vllm_pudding.serve_ray.launch", "--inside",
             config.model_dump_json(), "--socket", sock]), start_new_session=True)
        try:
            return asyncio.run(_bridge_until_exit(inner, port, sock))
        finally:  # Ray's agents can outlive ray.shutdown(); they stay in this group
            try:
                os.killpg(inner.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


async def _bridge_until_exit(inner: subprocess.Popen, port: int, sock: str) -> int:
    server = await netns.serve_tcp_to_unix(port, sock)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, inner.send_signal, signal.SIGTERM)
    print(f"pudding serve-ray: http://{netns.LOOPBACK}:{port} (Ray in a loopback-only "
          f"namespace, pid {inner.pid})", flush=True)
    try:
        return await asyncio.to_thread(inner.wait)
    finally:
        server.close()


def run_inside(config: RayAppConfig, socket_path: str | None, http_port: int,
               allow_host_network: bool = False) -> int:
    """Starts Ray and the app here, then serves until SIGTERM."""
    if not (netns.loopback_only() or allow_host_network):
        raise SystemExit(f"pudding serve-ray: refusing to start Ray: this network namespace "
                         f"has interfaces {netns.interfaces()}, not only lo")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Ray starts its workers at nice 15; the engines are the workload here, not background
    # work (Ray's own job manager sets 0 for the same reason).
    os.environ.setdefault("RAY_worker_niceness", "0")
    # Ray's memory monitor kills workers when the whole machine is short of memory, other
    # tenants' use included: here it killed the Serve controller and restarted every
    # engine. The kernel's OOM killer still guards the machine.
    os.environ.setdefault("RAY_memory_monitor_refresh_ms", "0")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
    import ray
    from ray import serve

    from vllm_pudding.serve_ray.app import build_app

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    ray.init(_node_ip_address=netns.LOOPBACK, include_dashboard=False,
             object_store_memory=OBJECT_STORE_BYTES, num_cpus=os.cpu_count(),
             configure_logging=False)
    try:
        serve.start(http_options={"host": netns.LOOPBACK, "port": http_port})
        serve.run(build_app(config), name="pudding", route_prefix="/")
        print("pudding serve-ray: ready", flush=True)
        if socket_path is None:
            signal.pause()
        else:
            asyncio.run(_bridge_forever(socket_path, http_port))
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
    return 0


async def _bridge_forever(socket_path: str, http_port: int) -> None:
    server = await netns.serve_unix_to_tcp(socket_path, http_port)
    async with server:
        await server.serve_forever()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="pudding dir")
    parser.add_argument("--replicas", type=int, default=2, help="engine replicas")
    parser.add_argument("--port", type=int, default=8000, help="port on 127.0.0.1")
    parser.add_argument("--cores-per-replica", type=int, default=1)
    parser.add_argument("--gpus-per-replica", type=float, default=None)
    parser.add_argument("--router-gpus", type=float, default=0.0,
                        help="GPUs per routing worker")
    parser.add_argument("--router-workers", default="1:2", metavar="MIN:MAX",
                        help="routing-worker autoscaling bounds")
    parser.add_argument("--options", default="{}", metavar="JSON",
                        help="further RayAppConfig fields (app.py), e.g. "
                        "'{\"router_batch_wait_s\": 0.01}'")
    parser.add_argument("--host-network", action="store_true",
                        help="run Ray on this host's network when no loopback-only "
                        "namespace can be made (Ray then listens on every interface)")
    parser.epilog = "Everything after `--` goes to every replica as `vllm serve` flags."


def split_vllm_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """(pudding serve-ray arguments, the `vllm serve` flags after the first `--`)."""
    if argv[:1] != ["serve-ray"] or "--" not in argv:
        return argv, []
    cut = argv.index("--")
    return argv[:cut], argv[cut + 1:]


def from_namespace(args: argparse.Namespace, vllm_args: list[str]) -> RayAppConfig:
    """The app config; ValueError when an option or a `vllm serve` flag is bad."""
    from vllm_pudding.serve_ray.replica import serve_args

    low, _, high = args.router_workers.partition(":")
    try:
        serve_args(args.model, vllm_args)  # vLLM's own parser: errors before Ray starts
    except SystemExit:
        raise ValueError(f"bad `vllm serve` flags after `--`: {vllm_args}") from None
    fields = dict(model=args.model, replicas=args.replicas, vllm_args=vllm_args,
                  cores_per_replica=args.cores_per_replica,
                  gpus_per_replica=args.gpus_per_replica, router_gpus=args.router_gpus,
                  router_min_workers=int(low), router_max_workers=int(high or low))
    try:
        fields.update(json.loads(args.options))
    except (ValueError, TypeError) as e:
        raise ValueError(f"--options: not a JSON object ({e})") from None
    return RayAppConfig(**fields)


def _inner_main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--inside", required=True, help="RayAppConfig as JSON")
    parser.add_argument("--socket", required=True)
    args = parser.parse_args()
    config = RayAppConfig.model_validate_json(args.inside)
    sys.exit(run_inside(config, args.socket, INNER_PORT))


if __name__ == "__main__":
    _inner_main()
