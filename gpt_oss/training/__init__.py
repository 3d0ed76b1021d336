"""Training: the loop (trainer), optimizers and schedules, checkpoints, several processes
(distributed), metrics, run tracking and CPU memory behaviour (runtime)."""
