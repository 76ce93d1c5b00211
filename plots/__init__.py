"""Figures for the chapters, scripts and benchmarks: plotting helpers and the diagrams of the ideas.

Figures are not the model's: `gpt/` and `lora/` never import this package.
"""
