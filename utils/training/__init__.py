"""The training engine and its pieces: the fit loop, checkpoints, run set-up."""
