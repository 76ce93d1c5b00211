"""Text classification with a GPT: labelled data sets, a classification head, training and evaluation.

Uses `gpt` for the model and `lora` for the adapters.

Read in this order:
    data.py     the SMS Spam Collection (strict reader, the book's balanced split, download on request)
    dataset.py  tokenise, pad with <|endoftext|>, truncate (and say so), trim all-padding columns; the
                train/validation/test triplet (split_datasets, spam_datasets)
    model.py    the 2-class head, read at the last real token; what full / last-block / head train
    train.py    the training loop, evaluation, curves (train and validation: the same two losses)
    saved.py    a trained classifier's folder: written whole or not at all, checked against its base on load
    finetune.py the main job as a function (FinetuneConfig, finetune): scripts/finetune_spam.py's body
    bag_of_words.py   the baseline without a GPT: logistic regression on which tokens a message contains

The base model a classifier starts from (the shipped gpt-mini, GPT-2, or a random init) is named by
one string: gpt/pretrained.py.
"""
