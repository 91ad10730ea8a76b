"""The command line and process set-up: argument parsing, quiet output, the worker site hook, the input sensor."""
