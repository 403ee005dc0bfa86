"""Training stages: each training method plugged into the engine (utils.training.engine)."""
