"""Sub-commands of the `caphuman` CLI, one module each."""
