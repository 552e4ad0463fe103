"""Training: the optimizer (optim), the train and evaluation steps and their metrics (steps,
metrics, trace), the trials as one group (group), the epoch loop (loop) and what it records
(records, finish, evaluation, layout, resume, budget), and the entry point (train)."""
