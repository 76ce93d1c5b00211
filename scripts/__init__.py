"""The command lines. Each script parses its flags, calls the packages (gpt, lora, classify, ...) and prints;
what a notebook, a test or another script reuses lives in a package, never here.

    python scripts/finetune_spam.py --quick          # a script, as a reader runs it
    python -m scripts.finetune_spam --quick          # the same, as a module
    from scripts.finetune_spam import main           # a test of the command line itself: main(argv)

Not installed with the packages (pyproject's packages.find leaves it out); the tests find it because pytest
puts the repository root on the path (pyproject: pythonpath = ["."]).
"""
