"""The two-input sentiment model, its bundle, and fitting; imports neither pipeline nor transforms."""
