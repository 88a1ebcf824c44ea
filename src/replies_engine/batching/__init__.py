"""Stage 2, the batch processor: grouping, lock+append, requeue, the AI context."""
