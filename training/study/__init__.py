"""The layer-wise study: its config, the runner, the results folder it writes and the report on it."""
