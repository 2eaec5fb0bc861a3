"""Exit 0 when the installed vllm-pudding declares every entry point of pyproject.toml.

setup.sh skips the editable install when the package is present; an editable install
reads entry points (vLLM's plugin groups, console scripts) only when it runs, so a
checkout that added one must install again. Command: `python scripts/entry_points_current.py`.
"""

import importlib.metadata as metadata
import sys
import tomllib
from pathlib import Path

project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
wanted = {(group, name, value) for group, points in project.get("entry-points", {}).items()
          for name, value in points.items()}
wanted |= {("console_scripts", n, v) for n, v in project.get("scripts", {}).items()}
have = {(e.group, e.name, e.value) for e in metadata.distribution("vllm-pudding").entry_points}
sys.exit(0 if wanted <= have else 1)
