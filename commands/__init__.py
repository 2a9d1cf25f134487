"""`read_queue.py` and its commands: the worker and the day-2 operations, one module each."""
