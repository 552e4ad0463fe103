"""Training: the optimizer (optim), the train and evaluation steps and their metrics (steps,
metrics, trace), the trials and the epoch loop over them (loop), what it records
(records, finish, evaluation, layout, resume, budget), and the entry point (train)."""
