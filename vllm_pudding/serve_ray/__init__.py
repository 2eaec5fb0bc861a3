"""PuDDing on Ray Serve: engine replicas that each serve a group of sets, routing workers that
pick a prompt's set before dispatch, and an OpenAI-compatible ingress (issue 12).

app.py (config, the bound application), replica.py (one engine, `vllm serve`'s app in
process), routing.py (routing workers), ingress.py (set, replica, resends), asgi.py,
netns.py and launch.py (`pudding serve-ray`: Ray only in a loopback-only namespace).
Importing this package imports neither Ray nor vLLM.
"""
