"""Load scripts/<name>.py as a module, for the tests that call a script's functions directly.

By path, not by import: scripts/ is a folder of command lines, not a package (their reusable parts
live in the packages: classify.finetune, classify.saved, ...). The module is registered in sys.modules while it runs (dataclasses look their
module up there) and loaded once per test session.
"""

import functools
import importlib.util
import sys
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


@functools.cache
def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"script_{name}", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
