"""Training internals: length-grouped batches and resumable training states."""
