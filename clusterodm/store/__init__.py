"""State storage: the Store protocol and its backends, staging on disk, legacy import."""
