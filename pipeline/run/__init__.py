"""A run: the typed config, the start-up plan, the graph builder and the launcher that runs it."""
