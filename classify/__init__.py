"""Text classification with a GPT: labelled data sets, a classification head, training and evaluation.

Uses `gpt` for the model; knows nothing about LoRA (scripts/finetune_spam.py combines the two).

Read in this order:
    data.py     the SMS Spam Collection (strict reader, the book's balanced split, download on request)
    dataset.py  tokenise, pad with <|endoftext|>, truncate (and say so), trim all-padding columns
    base.py     which pre-trained model to start from: the shipped gpt-mini, GPT-2, or a random init
    model.py    the 2-class head, read at the last real token; what full / last-block / head train
    train.py    the training loop, evaluation, curves
    bag_of_words.py   the baseline without a GPT: logistic regression on which tokens a message contains
"""
