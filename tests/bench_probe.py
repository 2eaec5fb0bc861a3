"""Runs a `vllm` CLI command in this process, recording the pudding set of every request
that `vllm bench throughput` finished (the command itself only counts them).

    python tests/bench_probe.py SETS.json bench throughput --model DIR ...

Used by test_bench_cli.py: the command line is the user's, only the record is added.
"""

import json
import sys

if __name__ == "__main__":
    import vllm.benchmarks.throughput as throughput

    record, run_vllm = sys.argv[1], throughput.run_vllm

    def recorded_run_vllm(*args, **kwargs):
        elapsed, outputs = run_vllm(*args, **kwargs)
        with open(record, "w") as f:
            json.dump([o.pudding_set for o in outputs], f)
        return elapsed, outputs

    throughput.run_vllm = recorded_run_vllm
    sys.argv = ["vllm", *sys.argv[2:]]
    from vllm.entrypoints.cli.main import main

    main()
