"""ml_collections configs, one per experiment."""
