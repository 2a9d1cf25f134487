"""`make run`: the endpoint on http://127.0.0.1:8000 and a worker, until Ctrl-C."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

from .local_stack import ROOT, local_stack


def main() -> int:
    port = 8000
    with local_stack({}, Path(ROOT / "data" / "logs"), port=port, worker_args=()) as stack:
        print(f"endpoint: {stack.url}/events   (logs in data/logs/; Ctrl-C stops both)")
        print(f"try:  curl -X POST -H 'Content-Type: application/json' --data @sample-data.json {stack.url}/events")
        # Block, then wait: both Ctrl-C and SIGTERM end here, so the finally-block stops the children.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
        print("stopping...")
    return 0


if __name__ == "__main__":
    sys.exit(main())
