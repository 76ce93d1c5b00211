"""Text classification with a GPT: labelled data sets, a classification head, training and evaluation.

Uses `gpt` for the model; knows nothing about LoRA (scripts combine the two)."""
