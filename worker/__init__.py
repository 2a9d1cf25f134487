"""The worker: receive from the queue, decode into rows, write one transaction, then delete."""
