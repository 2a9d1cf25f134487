"""tune-firehose worker: `python read_queue.py --help`. The loop lives in db/worker.py."""

import sys

if __name__ == "__main__":
    # Imported here, not above: the decoding helper process re-imports this file as its main
    # module, and needs none of the command line (or boto3) to decode.
    from db.cli import main

    sys.exit(main())
