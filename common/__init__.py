"""Plumbing every other package and script shares: atomic files and folders (files.py), the command
line's one-line refusals (cli.py), a settings dataclass from a dict (config.py). Imports nothing of gpt/,
lora/ or classify/."""
