"""``python -m prefect_batch.agent --root DIR``: run the node agent from the installed package."""

from __future__ import annotations

import sys

from prefect_batch.agent.agent import main

if __name__ == "__main__":
    sys.exit(main())
