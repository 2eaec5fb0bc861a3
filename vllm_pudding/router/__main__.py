"""`python -m vllm_pudding.router` = `python -m vllm_pudding.router.train`."""

import sys

from vllm_pudding.router.train import main

sys.exit(main())
