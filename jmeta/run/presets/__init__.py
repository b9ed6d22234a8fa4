"""Named configs, one module per experiment: its docstring gives the command, ``CONFIG`` the settings."""
