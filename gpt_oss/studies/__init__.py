"""Studies: comparing runs of a sweep (tables and plots) and sharing GPUs among sweep jobs."""
