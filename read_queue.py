"""tune-firehose worker: `python read_queue.py --help`. The loop lives in db/worker.py."""

import sys

from commands.cli import main

if __name__ == "__main__":
    sys.exit(main())
