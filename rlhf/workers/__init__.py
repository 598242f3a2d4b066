"""One Ray actor class per role, plus a worker group for data parallelism."""
