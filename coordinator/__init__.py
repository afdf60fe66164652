"""The coordinator: system of record for chat data, the job queue, workers and keys."""
