"""The run layer: configs, experiment wiring, the host loop, checkpoints, logs, plots, export, search, the CLI."""
