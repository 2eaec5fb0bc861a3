"""The `pudding` command.

    pudding demo                     run the main demo (offline batch, mixed sets, vs dense)
    pudding default-dir              build (once) and print the default pudding model dir
    pudding static MODEL_DIR OUT --omit 3,5,9
                                     write a checkpoint with those layers physically removed
    pudding pin PUDDING_DIR --set N OUT
                                     write a pudding dir whose requests all run set N (no
                                     router, default set N): for clients that cannot send
                                     `pudding_set`, e.g. lm-evaluation-harness
    pudding build BASE_DIR OUT_DIR --k 7
                                     pool search, router labels, router, pudding dir
                                     (resumable; `pudding build --help`, vllm_pudding/build.py)
    pudding serve-ray PUDDING_DIR --replicas 2 --port 8000 -- [vllm serve flags]
                                     Ray Serve: engine replicas, routing workers, set-affine
                                     dispatch, OpenAI API on 127.0.0.1 (vllm_pudding/serve_ray/)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="pudding", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="run the main demo")
    sub.add_parser("default-dir", help="build and print the default pudding dir")
    static = sub.add_parser("static", help="write a statically pruned checkpoint")
    static.add_argument("model_dir", type=Path)
    static.add_argument("out", type=Path)
    static.add_argument("--omit", required=True, help="comma-separated layer indices")
    pin = sub.add_parser("pin", help="write a pudding dir pinned to one pool set")
    pin.add_argument("pudding_dir", type=Path)
    pin.add_argument("--set", dest="set_id", metavar="N", type=int, required=True,
                     help="pool set id")
    pin.add_argument("out", type=Path)
    from vllm_pudding import build

    build.add_arguments(sub.add_parser(
        "build", help="build a pudding dir for a Llama, Mistral, Qwen2 or Gemma 3 (text) checkpoint",
        description=build.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter))
    from vllm_pudding.serve_ray import launch

    serve_ray = sub.add_parser("serve-ray", help="serve a pudding dir on Ray Serve replicas",
                               description=launch.__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
    launch.add_arguments(serve_ray)
    argv, vllm_args = launch.split_vllm_args(list(sys.argv[1:] if argv is None else argv))
    args = parser.parse_args(argv)
    if args.command == "demo":
        from vllm_pudding.demo import main as demo

        demo()
    elif args.command == "default-dir":
        from vllm_pudding.default_pudding import ensure_default_pudding_dir

        print(ensure_default_pudding_dir())
    elif args.command == "static":
        from vllm_pudding.static import write_static_checkpoint

        omit = sorted(int(x) for x in args.omit.split(",") if x.strip())
        print(write_static_checkpoint(args.model_dir, omit, args.out))
    elif args.command == "pin":
        from vllm_pudding.pin import pin_pudding_dir

        try:
            print(pin_pudding_dir(args.pudding_dir, args.set_id, args.out))
        except ValueError as e:
            pin.error(str(e))
    elif args.command == "serve-ray":
        try:
            config = launch.from_namespace(args, vllm_args)
        except ValueError as e:
            serve_ray.error(str(e))
        raise SystemExit(launch.serve_ray(config, args.port, args.host_network))
    elif args.command == "build":
        build.build(build.from_namespace(args))


if __name__ == "__main__":
    main()
