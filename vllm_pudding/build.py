"""`pudding build`: a pudding model dir for your own Llama, Mistral, Qwen2 or Gemma 3 (text) checkpoint, in
one command.

    pudding build BASE_DIR OUT_DIR --k 7                  # the paper's recipe (hours on CPU)
    pudding build BASE_DIR OUT_DIR --pool pudding/llama3.1-8b   # a published pool: router only
    pudding build BASE_DIR OUT_DIR --k 7 --examples 32 --label-examples 64 --tasks piqa,arc_easy

One front door for the steps that exist as separate modules, with the same outputs:

1. `pool`: the candidate-pool search (`vllm_pudding.search.run.search`; the module
   `python -m vllm_pudding.search`): greedy removals per task and loss, the pool rule.
   Skipped with `--pool` (a pool JSON, a pudding dir, or a `pudding/<name>`).
2. `labels`: every train example of each task scored under every pool set through
   the engine (`python -m vllm_pudding.eval --split train --sets all`), on a
   router-less pudding dir in the work dir.
3. `router`: the router head trained on those labels, variants picked on held-out
   train rows (`python -m vllm_pudding.router.train`).
4. `dir`: OUT_DIR written (`artifact.build_pudding_dir`) and the router installed
   (`router.install.install_router`); serve it with `vllm serve OUT_DIR`.

Resumable: each step writes into a work dir (default `<cache>/build/<OUT_DIR name>-<hash>/`,
`--work-dir`) and records what it was made from in `state.json`; a rerun skips every
step whose inputs are unchanged (a changed knob redoes that step and the ones after
it). The pool search also checkpoints inside its step (after every greedy step), so
an interrupted search resumes mid-way. `--stop-after STEP` ends after a step.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

STEPS = ("pool", "labels", "router", "dir")
STATE_FILE = "state.json"


class BuildArgs(BaseModel):
    """What a build depends on: the knobs of `pudding build`, validated."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base: Path = Field(description="HF model dir (the dense checkpoint: Llama, Mistral, Qwen2 or Gemma 3 text).")
    out: Path = Field(description="The pudding model dir to write.")
    k: int = Field(7, ge=1, description="Layers each set omits.")
    examples: int = Field(128, ge=1, description="Train examples per task, pool search.")
    label_examples: int = Field(640, ge=2, description="Train examples per task scored "
                                "under every set (router labels; 20% held out).")
    router_kind: Literal["hidden", "text"] = Field("hidden", description="hidden: the "
                                                   "engine's residual stream; text: MiniLM.")
    tasks: tuple[str, ...] = Field(description="Calibration tasks (train splits).")
    pool: str | None = Field(None, description="Skip the search: a pool JSON, a pudding dir "
                             "or a pudding/<name>.")
    pool_size: int = Field(10, ge=1)
    workers: int = Field(2, ge=1, description="Pool search processes.")
    compiled: bool = Field(True, description="torch.compile in the pool search and the "
                           "labels engine; off: faster start, slower steps.")
    chat_augment: bool | None = Field(None, description="Also train the router on "
                                      "chat-templated prompts; None: when the base "
                                      "tokenizer has a chat template (an instruct model).")
    epochs: int = Field(300, ge=1, description="Router head epochs.")
    dtype: Literal["bfloat16", "float32"] = "bfloat16"
    work_dir: Path | None = Field(None, description="Where the steps keep their outputs "
                                  "(default: <cache>/build/<out name>-<hash>).")
    sanity_bound: float | None = Field(None, gt=0, description="Pool search: keep out every "
                                       "set whose free-text loss exceeds dense's by more "
                                       "than this (nats/token; vllm_pudding.eval.sanity).")
    stop_after: Literal["pool", "labels", "router", "dir"] | None = Field(
        None, description="End after this step (a rerun without it resumes).")

    @field_validator("base")
    @classmethod
    def _is_model_dir(cls, base: Path) -> Path:
        if not (Path(base) / "config.json").is_file():
            raise ValueError(f"{base}: no config.json (expected an HF model dir)")
        return base

    @field_validator("tasks")
    @classmethod
    def _has_tasks(cls, tasks: tuple[str, ...]) -> tuple[str, ...]:
        from vllm_pudding.data.tasks import CALIBRATION_TASKS

        bad = [t for t in tasks if t not in CALIBRATION_TASKS]
        if not tasks or bad:
            raise ValueError(f"tasks {list(tasks)}: choose from {', '.join(CALIBRATION_TASKS)} "
                             "(the tasks with a train split here)")
        return tasks


@dataclass
class Step:
    name: str
    key: dict
    run: Callable[[], dict]
    """Does the step; returns what the summary shows of it."""
    present: Callable[[], bool]
    """Its output is still there (a deleted output redoes the step)."""


@dataclass
class Build:
    args: BuildArgs
    work: Path
    state: dict = field(default_factory=dict)

    # ------------------------------------------------------------------ paths
    @property
    def pool_json(self) -> Path:
        return self.work / "pool.json"

    @property
    def labels_dir(self) -> Path:
        """A router-less pudding dir with the pool: the labels engine serves it."""
        return self.work / "pool-dir"

    @property
    def labels_json(self) -> Path:
        return self.work / "labels.json"

    @property
    def router_dir(self) -> Path:
        return self.work / "router"

    # ------------------------------------------------------------------ steps
    def steps(self) -> list[Step]:
        a = self.args
        base_fp = _base_fingerprint(a.base)
        if a.pool is not None:
            pool_key = {"base": base_fp, "pool": _digest(pool_document(a.pool))}
        else:
            pool_key = {"base": base_fp, "k": a.k, "examples": a.examples,
                        "tasks": list(a.tasks), "pool_size": a.pool_size, "dtype": a.dtype,
                        "compiled": a.compiled, "sanity_bound": a.sanity_bound}
        labels_key = {"pool": pool_key, "n": a.label_examples, "tasks": list(a.tasks),
                      "dtype": a.dtype}  # compiled or eager: same scores up to rounding
        router_key = {"labels": labels_key, "kind": a.router_kind, "epochs": a.epochs,
                      "chat_augment": a.chat_augment}
        kind_dir = self.router_dir / a.router_kind
        return [Step("pool", pool_key, self.make_pool, self.pool_json.is_file),
                Step("labels", labels_key, self.make_labels,
                     lambda: self.labels_json.is_file() and (self.labels_dir / "config.json")
                     .is_file()),
                Step("router", router_key, self.make_router,
                     lambda: (kind_dir / "router.json").is_file()),
                Step("dir", {"router": router_key, "out": str(Path(a.out).resolve())},
                     self.make_dir, self.out_is_current)]

    def out_is_current(self) -> bool:
        from vllm_pudding.artifact import load_pudding_dir

        try:
            return load_pudding_dir(self.args.out).router is not None
        except ValueError:
            return False

    def make_pool(self) -> dict:
        from vllm_pudding.search.run import dump_json, search

        a = self.args
        if a.pool is not None:
            doc = pool_document(a.pool)
            self.pool_json.write_text(dump_json(doc))
            layers = json.loads((Path(a.base) / "config.json").read_text())["num_hidden_layers"]
            self.pool().check(layers)  # a pool for another depth fails here, naming the set
        else:  # writes pool.json as `python -m vllm_pudding.search --out` does
            doc = search(a.base, a.tasks, a.k, a.examples, self.pool_json,
                         pool_size=a.pool_size, dtype=a.dtype, workers=a.workers,
                         compiled=a.compiled, cache_root=self.work / "search",
                         sanity_bound=a.sanity_bound)
        return {"sets": [s["layers"] for s in doc["sets"]], "file": str(self.pool_json)}

    def make_labels(self) -> dict:
        from vllm_pudding.artifact import build_pudding_dir
        from vllm_pudding.eval.__main__ import main as eval_main

        a = self.args
        build_pudding_dir(a.base, self.pool(), self.labels_dir,
                          meta={"router_labels_engine": True})  # no "train a router" advice
        eval_main(["--model", str(self.labels_dir), "--split", "train",
                   "--tasks", ",".join(a.tasks), "--n", str(a.label_examples), "--sets", "all",
                   "--dtype", a.dtype, "--max-model-len", str(_max_model_len(a.base)),
                   "--out", str(self.labels_json)] + ([] if a.compiled else ["--enforce-eager"]))
        return {"file": str(self.labels_json)}

    def make_router(self) -> dict:
        from vllm_pudding.router.train import main as train_main

        a = self.args
        argv = ["--pudding-dir", str(self.labels_dir), "--labels", str(self.labels_json),
                "--kinds", a.router_kind, "--out", str(self.router_dir),
                "--epochs", str(a.epochs)]
        chat = a.chat_augment if a.chat_augment is not None else _has_chat_template(a.base)
        train_main(argv + (["--chat-augment"] if chat else []))
        return held_out_figures(self.router_dir / "train_report.json", a.router_kind)

    def make_dir(self) -> dict:
        from vllm_pudding.artifact import build_pudding_dir
        from vllm_pudding.router.install import install_router

        a = self.args
        meta = {"pool_file": str(self.pool_json),
                "pool": json.loads(self.pool_json.read_text()),
                "pudding_build": {"work_dir": str(self.work), "labels": str(self.labels_json),
                                  "router_report": str(self.router_dir / "train_report.json")}}
        out = build_pudding_dir(a.base, self.pool(), a.out, meta=meta)
        install_router(out, self.router_dir / a.router_kind)
        return {"out": str(out)}

    def pool(self):
        from vllm_pudding.config import PuddingConfig

        doc = json.loads(self.pool_json.read_text())
        return PuddingConfig(omission_sets=[s["layers"] for s in doc["sets"]],
                             default_set=doc.get("default_set", 0),
                             routable_sets=doc.get("routable_sets"))

    # ------------------------------------------------------------------ driver
    def run(self) -> dict:
        """Runs the steps not done before; returns this run's view of each step visited."""
        from tqdm import tqdm

        self.work.mkdir(parents=True, exist_ok=True)
        state_path = self.work / STATE_FILE
        self.state = json.loads(state_path.read_text()) if state_path.is_file() else {}
        steps = self.steps()
        visited = {}
        bar = tqdm(total=len(steps), desc="pudding build", unit="step", dynamic_ncols=True)
        stale = False  # a redone step invalidates every step after it
        for step in steps:
            done = self.state.get(step.name)
            if (not stale and done is not None and done["key"] == _digest(step.key)
                    and step.present()):
                bar.write(f"[{step.name}] done before ({done['seconds']:.0f}s): skipped")
                visited[step.name] = {**done, "skipped": True}
            else:
                stale = True
                bar.set_description(f"pudding build: {step.name}")
                bar.write(f"[{step.name}] running")
                t0 = time.perf_counter()
                result = step.run()
                done = {"key": _digest(step.key), "seconds": time.perf_counter() - t0,
                        "result": result}
                self.state[step.name] = done
                state_path.write_text(json.dumps(self.state, indent=1))
                visited[step.name] = {**done, "skipped": False}
            bar.update(1)
            if step.name == self.args.stop_after:
                break
        bar.close()
        return visited


def pool_document(spec: str) -> dict:
    """A pool JSON document from a file, a pudding dir, or a `pudding/<name>`."""
    from vllm_pudding.names import NAMES, PREFIX, is_pudding_name

    if is_pudding_name(spec):
        entry = NAMES.get(spec[len(PREFIX):])
        if entry is None:
            from vllm_pudding.names import known_names

            raise ValueError(f"--pool {spec}: unknown name; known: {known_names()}")
        from importlib import resources

        return json.loads(resources.files("vllm_pudding.pools").joinpath(entry.pool_file)
                          .read_text())
    path = Path(spec)
    if path.is_dir():
        from vllm_pudding.artifact import load_pudding_dir

        pool = load_pudding_dir(path)
        return {"sets": [{"layers": list(s)} for s in pool.omission_sets],
                "default_set": pool.default_set, "source": {"pudding_dir": str(path)}}
    if path.is_file():
        doc = json.loads(path.read_text())
        if not isinstance(doc, dict) or "sets" not in doc:
            raise ValueError(f"--pool {spec}: not a pool JSON (no 'sets')")
        return doc
    raise ValueError(f"--pool {spec}: no such file or dir, and not a pudding/<name>")


def held_out_figures(report_json: Path, kind: str) -> dict:
    """The router's held-out routed accuracy (best variant) beside the best single set."""
    report = json.loads(report_json.read_text())
    best = max((v for v in report["variants"] if v["kind"] == kind),
               key=lambda v: v.get("held_chat_avg", v["held_avg"]) + v["held_avg"])
    single = report["baselines"]["best single set (chosen on train rows)"]
    mean = sum(single["acc"].values()) / len(single["acc"])
    return {"kind": kind, "variant": f"{best['target']}/{best['objective']}",
            "held_out_rows": {t: c[1] for t, c in report["counts"].items()},
            "held_avg": best["held_avg"], "held_chat_avg": best.get("held_chat_avg"),
            "best_single_set": single["set"], "best_single_set_avg": mean,
            "report": str(report_json.with_suffix(".md"))}


def summary(state: dict, args: BuildArgs, work: Path) -> str:
    lines = ["", "pudding build: summary"]
    for name in STEPS:
        s = state.get(name)
        if s is None:
            lines.append(f"  {name:7} not run")
            continue
        how = "skipped, done before in" if s.get("skipped") else "took"
        lines.append(f"  {name:7} {how} {s['seconds']:.1f}s")
    pool = state.get("pool", {}).get("result")
    if pool:
        lines.append(f"pool ({len(pool['sets'])} sets, k = {len(pool['sets'][0])}): "
                     + " ".join(str(s) for s in pool["sets"]))
    r = state.get("router", {}).get("result")
    if r:
        n = ", ".join(f"{t} {c}" for t, c in r["held_out_rows"].items())
        chat = (f", chat-format {100 * r['held_chat_avg']:.1f}"
                if r.get("held_chat_avg") is not None else "")
        lines.append(f"router ({r['kind']}, {r['variant']}): held-out routed accuracy "
                     f"{100 * r['held_avg']:.1f}%{chat} vs best single set "
                     f"{r['best_single_set']} {100 * r['best_single_set_avg']:.1f}% "
                     f"(held-out train rows: {n}); {r['report']}")
    if "dir" in state:
        lines.append(f"pudding dir: {args.out}  (vllm serve {args.out})")
    lines.append(f"work dir: {work}")
    return "\n".join(lines)


def default_work_dir(out: Path) -> Path:
    from vllm_pudding.default_model import cache_dir

    out = Path(out).resolve()
    tag = hashlib.sha256(str(out).encode()).hexdigest()[:10]
    return cache_dir() / "build" / f"{out.name}-{tag}"


def build(args: BuildArgs, log: Callable[[str], None] = print) -> dict:
    """Runs (or resumes) the build; returns each visited step's key, seconds, result and
    whether it was skipped (done before)."""
    work = Path(args.work_dir) if args.work_dir else default_work_dir(args.out)
    state = Build(args, work).run()
    log(summary(state, args, work))
    return state


def _tasks(spec: str) -> tuple[str, ...]:
    from vllm_pudding.data.tasks import CALIBRATION_TASKS

    if spec in ("calib6", "all"):
        return tuple(CALIBRATION_TASKS)
    return tuple(t.strip() for t in spec.split(",") if t.strip())


def _digest(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _base_fingerprint(base: Path) -> dict[str, Any]:
    """The base model as the steps see it: its path, config and weight files (name, size)."""
    base = Path(base).resolve()
    weights = sorted((p.name, p.stat().st_size) for p in base.glob("*.safetensors"))
    return {"path": str(base), "config": json.loads((base / "config.json").read_text()),
            "weights": weights}


def _has_chat_template(base: Path) -> bool:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(base)).chat_template is not None


def _max_model_len(base: Path) -> int:
    config = json.loads((Path(base) / "config.json").read_text())
    return min(2048, int(config.get("max_position_embeddings", 2048)))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("base", type=Path,
                   help="HF model dir (the dense checkpoint: Llama, Mistral, Qwen2 or Gemma 3 text)")
    p.add_argument("out", type=Path, help="the pudding model dir to write")
    p.add_argument("--k", type=int, default=7, help="layers each set omits")
    p.add_argument("--examples", type=int, default=128,
                   help="train examples per task for the pool search")
    p.add_argument("--label-examples", type=int, default=640,
                   help="train examples per task scored under every set (router labels)")
    p.add_argument("--router-kind", default="hidden", choices=("hidden", "text"),
                   help="hidden: reads the engine's own residual stream (no extra model); "
                   "text: MiniLM on the prompt text (the paper's design)")
    p.add_argument("--tasks", default="calib6",
                   help="calibration tasks, comma-separated, or calib6 (all six)")
    p.add_argument("--pool", default=None,
                   help="skip the search: a pool JSON, a pudding dir or a pudding/<name>")
    p.add_argument("--pool-size", type=int, default=10)
    p.add_argument("--workers", type=int, default=2, help="pool search processes")
    p.add_argument("--eager", action="store_true",
                   help="no torch.compile (pool search and labels engine): starts faster, "
                   "steps run slower; for small runs")
    p.add_argument("--chat-augment", default="auto", choices=("auto", "on", "off"),
                   help="also train the router on chat-templated prompts (auto: when the "
                   "base tokenizer has a chat template)")
    p.add_argument("--epochs", type=int, default=300, help="router head epochs")
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    p.add_argument("--work-dir", type=Path, default=None,
                   help="where steps keep their outputs (default: <cache>/build/...)")
    p.add_argument("--sanity-bound", type=float, default=None,
                   help="pool search: drop sets whose free-text loss exceeds dense's by more "
                   "than this many nats/token (e.g. 1.8; vllm_pudding.eval.sanity)")
    p.add_argument("--stop-after", default=None, choices=STEPS,
                   help="end after this step (a rerun without it resumes)")


def from_namespace(ns: argparse.Namespace) -> BuildArgs:
    """The validated knobs; a bad one ends the command with its message (no traceback)."""
    from pydantic import ValidationError

    try:
        return BuildArgs(
            base=ns.base, out=ns.out, k=ns.k, examples=ns.examples,
            label_examples=ns.label_examples, router_kind=ns.router_kind,
            tasks=_tasks(ns.tasks), pool=ns.pool, pool_size=ns.pool_size, workers=ns.workers,
            compiled=not ns.eager, epochs=ns.epochs, dtype=ns.dtype, work_dir=ns.work_dir,
            chat_augment={"auto": None, "on": True, "off": False}[ns.chat_augment],
            sanity_bound=ns.sanity_bound, stop_after=ns.stop_after)
    except ValidationError as e:
        raise SystemExit("pudding build: " + "; ".join(
            f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())) from None
