"""Exercise checks for the chapter notebooks: one otter-grader test file per exercise in chNN/, one guard (_guard.py)."""
