"""A client of `pudding serve-ray`: pinned, routed, chat, streamed, refused; where each went.

Start the app (root: it makes a loopback-only network namespace for Ray), then run this:

    .venv/bin/pudding serve-ray $(.venv/bin/pudding default-dir) --replicas 2 --port 8000 \
        -- --max-model-len 2048 --served-model-name pudding &
    .venv/bin/python examples/ray_client.py --url http://127.0.0.1:8000 --model pudding

With the official `openai` client: completions pinned (`vllm_xargs.pudding_set`) and routed
(the routing workers pick the set before the ingress picks a replica), chat, a streamed
completion (every chunk carries the set), a mistyped key (HTTP 400, as `vllm serve`), then
`/pudding/replicas`: each replica's set group and the sets its engine actually served.
"""

from __future__ import annotations

import argparse
import json
import urllib.request

QUESTION = "Question: Which gas do plants absorb from the air?\nAnswer:"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--model", default="pudding", help="served model name")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--set", type=int, default=1, help="the set the pinned requests use")
    args = parser.parse_args()

    import openai

    client = openai.OpenAI(base_url=f"{args.url}/v1", api_key="unused", max_retries=0)
    common = dict(model=args.model, max_tokens=args.max_tokens, temperature=0.0)
    pin = {"vllm_xargs": {"pudding_set": args.set}}
    for how, extra in (("pinned", pin), ("routed", {})):
        out = client.completions.create(prompt=QUESTION, extra_body=extra, **common)
        extra_fields = out.model_extra or {}
        print(f"completion, {how}: sets {extra_fields.get('pudding_sets')} routed "
              f"{extra_fields.get('pudding_routed')}: {out.choices[0].text!r}")
    chat = client.chat.completions.create(
        messages=[{"role": "user", "content": "Name a primary colour."}], **common)
    print(f"chat, routed: set {chat.model_extra.get('pudding_set')} routed "
          f"{chat.model_extra.get('pudding_routed')}: {chat.choices[0].message.content!r}")
    seen = []
    for chunk in client.completions.create(prompt=QUESTION, stream=True, **common):
        for choice in chunk.choices:
            extra_fields = choice.model_extra or {}
            seen.append((extra_fields.get("pudding_set"), extra_fields.get("pudding_routed")))
    print(f"completion, streamed, routed: (set, routed) per chunk {sorted(set(seen))}")
    try:
        client.completions.create(prompt=QUESTION, extra_body={"vllm_xargs": {"pudding_sett": 1}},
                                  **common)
    except openai.BadRequestError as e:
        print(f"mistyped key: HTTP {e.status_code}: {e.body.get('message', e.body)}")
    with urllib.request.urlopen(f"{args.url}/pudding/replicas", timeout=60) as resp:
        stats = json.load(resp)
    for r in stats["replicas"]:
        engine = r.get("engine") or {}
        print(f"replica {r['replica']}: group {r['sets']}, served "
              f"{engine.get('sets_served')}, spills {r['spills']}")


if __name__ == "__main__":
    main()
