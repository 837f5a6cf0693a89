"""Turning texts into scores with a checkpoint: tokens, runners per backend, the backend choice, explanations."""
