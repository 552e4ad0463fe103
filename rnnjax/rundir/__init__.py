"""A run's directory and what it holds: its files and paths (workdir), the lock, the checks
before a run starts (preflight), checkpoints and their integrity, TensorBoard events and the
curves plot."""
