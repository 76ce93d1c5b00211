"""A fine-tuned classifier on disk: one folder, written whole or not at all, checked when read.

    runs/spam-lora/
        classifier.json           how to rebuild it: base, attention layout, method, labels, padding
                                  length, a fingerprint of the base weights, quick (smoke run) or not
        adapter.safetensors       --method lora: the adapter and its head (lora.save_adapter) ...
        adapter_config.json
        classifier.safetensors    ... or, for full / last-block / head, the trained weights
        history.json, curves.png  what the job measured (classify/finetune.py)

Writing (`run_folder`): the whole folder is built beside the old one and swapped in when complete
(common.files.atomic_folder), so the previous result stays whole until the new one is; a second
process writing the same folder is refused (FolderLocked). Before any work, `check_out_folder`
refuses an --out that is a file, a folder of other files (another model's, say), a real run when
this is a smoke run (`quick`), or a place that cannot be written or has too little space.

Reading (`load_classifier`): classifier.json is checked key by key, the base is rebuilt and its
weights compared with the fingerprint saved at training time (lora.base_fingerprint, the LoRA
adapters' own check), for every method: a head trained on one base never silently runs on another.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from pathlib import Path

from classify.model import add_classification_head, predict_texts
from common.cli import UserError
from common.files import atomic_folder, atomic_write_text
from gpt.pretrained import describe_base, load_base
from lora import base_fingerprint

FORMAT = "lora-from-scratch/spam-classifier"
CLASSIFIER_FILE = "classifier.json"
WEIGHTS_FILE = "classifier.safetensors"  # trained weights for the non-LoRA methods
# classifier.json keys load_classifier needs (others are informative)
REQUIRED_KEYS = ("format", "base", "base_seed", "attention", "method", "labels", "max_length", "weights")


def _whole(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# Each required field's test and what it should hold: a field edited by hand is named, not met later
# as "invalid literal for int()".
FIELD_CHECKS = {
    "base": (lambda v: isinstance(v, str) and v != "", "a model name or path"),
    "base_seed": (_whole, "a whole number"),
    "attention": (lambda v: isinstance(v, str), "'separate' or 'fused'"),
    "method": (lambda v: isinstance(v, str), "a method name such as 'lora' or 'head'"),
    "labels": (lambda v: isinstance(v, list) and len(v) >= 2 and all(isinstance(x, str) for x in v),
               "a list of at least 2 label names"),
    "max_length": (lambda v: _whole(v) and v > 0, "a whole number of tokens > 0"),
    "weights": (lambda v: isinstance(v, str) and v != "", "a file name"),
}
MIN_FREE_BYTES = 20 * 2**20  # what a LoRA or head-only run writes, with margin: adapter, history, curves


def free_bytes(path: Path) -> int:
    """Free space (bytes) on the file system that holds `path` (an existing folder)."""
    return shutil.disk_usage(path).free


def writable(folder: Path) -> bool:
    """Whether a file can be created in `folder` (an existing folder), tried rather than guessed: os.access
    says yes to root on a read-only mount. The probe file is removed at once."""
    try:
        with tempfile.TemporaryFile(dir=folder, prefix=".write-test-"):
            return True
    except OSError:
        return False


def _existing_ancestor(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path("/")


def is_quick_run(folder: str | Path, marker: str = CLASSIFIER_FILE) -> bool | None:
    """True: a smoke run's folder; False: a real run's; None: not a run folder (no `marker` file, the JSON
    file that records "quick"). A folder saved before runs recorded it counts as real (the safe side)."""
    path = Path(folder) / marker
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text()).get("quick") is True
    except (ValueError, OSError, AttributeError):
        return False


def check_out_folder(out: str | Path, quick: bool = False, needed_bytes: int = MIN_FREE_BYTES,
                     default_hint: str | None = None, marker: str = CLASSIFIER_FILE) -> Path:
    """Refuse (UserError, one line) an output folder this run must not or cannot write, before any work:
    a file; a folder of other files (only a classifier run's folder is replaced); for a smoke run
    (quick=True), a real run's folder; a place that cannot be written; less free space than
    needed_bytes. A run folder is one with the `marker` file (classifier.json; another script's results
    file). Returns the folder as a Path."""
    out = Path(out)
    hint = f" (a --quick run's default is {default_hint})" if default_hint else ""
    if out.is_file() or (out.exists() and not out.is_dir()):
        raise UserError(f"--out {out} is a file, not a folder: give a folder for the run (new, empty, or an "
                        f"earlier run's, which is replaced)")
    if out.is_dir() and any(out.iterdir()):
        kind = is_quick_run(out, marker)
        if kind is None:
            names = sorted(p.name for p in out.iterdir())
            shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
            what = "a classifier run" if marker == CLASSIFIER_FILE else "a run"
            raise UserError(f"--out {out} is not {what} folder (it holds {shown}; no {marker}) and "
                            f"would be replaced: give a new or empty folder, or an earlier run's")
        if quick and not kind:
            raise UserError(f"--out {out} holds a real run; a --quick run never replaces one: give another "
                            f"--out{hint}")
    parent = _existing_ancestor(out.parent)
    if not parent.is_dir():
        raise UserError(f"--out {out}: {parent} is a file, not a folder")
    if not writable(parent):  # before the free space: a read-only disk reports 0 bytes free
        raise UserError(f"--out {out}: {parent} is read-only or not writable by you: choose a folder you can write")
    free = free_bytes(parent)
    if free < needed_bytes:
        raise UserError(f"--out {out}: only {free / 2**20:.1f} MB free on its disk, the run writes about "
                        f"{needed_bytes / 2**20:.0f} MB: free some space or choose another --out")
    return out


@contextlib.contextmanager
def run_folder(out: str | Path, quick: bool = False, needed_bytes: int = MIN_FREE_BYTES, default_hint: str | None = None,
               marker: str = CLASSIFIER_FILE):
    """check_out_folder, then hold `out` for writing (common.files.atomic_folder): yields an empty
    temporary folder beside it, swapped in whole when the block ends without error. Enter it before the
    work: a second writer is refused at once, and a place that cannot be written is found before any
    training."""
    out = check_out_folder(out, quick, needed_bytes, default_hint, marker)
    try:
        ctx = atomic_folder(out)
        tmp = ctx.__enter__()
    except OSError as err:  # read-only, no permission, a path through a file (PermissionError included)
        raise UserError(f"cannot write --out {out}: {err.strerror or err} ({err.filename or out.parent}); "
                        f"choose a folder you can write") from None
    try:
        yield tmp
    except BaseException as err:
        if not ctx.__exit__(type(err), err, err.__traceback__):
            raise
    else:
        try:
            ctx.__exit__(None, None, None)
        except OSError as err:  # e.g. the disk filled up while the folder was flushed
            raise UserError(f"could not finish writing {out}: {err.strerror or err}; the previous contents are "
                            f"unchanged") from None


def classifier_info(model_spec: str, base_seed: int, attention: str, method: str, labels: list[str], max_length: int,
                    fingerprint: dict | None, quick: bool = False, base_config: dict | None = None) -> dict:
    """What classifier.json records (see the module docstring); `weights` is filled in by write_classifier.
    fingerprint: lora.base_fingerprint of the base as loaded; base_config: its GPTConfig.to_dict()."""
    return {"format": FORMAT, "base": model_spec, "base_kind": describe_base(model_spec)["kind"],
            "base_seed": base_seed,  # used only to rebuild a random base
            "attention": attention, "method": method, "labels": list(labels), "max_length": int(max_length),
            "quick": bool(quick), "base_config": base_config, "base_fingerprint": fingerprint}


def write_classifier(folder: str | Path, model, info: dict) -> list[str]:
    """Write the trained part of `model` and classifier.json into `folder` (the temporary folder of
    run_folder: the files appear together or not at all). LoRA (info["method"] == "lora"): the active
    adapter with its head (lora.save_adapter); otherwise every parameter with requires_grad.
    Returns the file names written."""
    folder = Path(folder)
    if info["method"] == "lora":
        from lora import save_adapter

        weights = save_adapter(model, folder)  # adapter.safetensors + adapter_config.json (with the head)
        written = [weights.name, "adapter_config.json"]
    else:
        from safetensors.torch import save_file

        trained = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}
        save_file(trained, str(folder / WEIGHTS_FILE), metadata={"format": FORMAT, "method": info["method"]})
        written = [WEIGHTS_FILE]
    atomic_write_text(folder / CLASSIFIER_FILE, json.dumps({**info, "weights": written[0]}, indent=2) + "\n")
    return written + [CLASSIFIER_FILE]


def save_classifier(out: str | Path, model, info: dict) -> list[str]:
    """write_classifier into `out` as one unit (run_folder): the old folder stays whole until the new one is
    complete. Returns the file names written."""
    with run_folder(out, quick=info.get("quick", False)) as tmp:
        return write_classifier(tmp, model, info)


def read_classifier_info(folder: str | Path) -> dict:
    """classifier.json of a run folder, checked: ValueError / FileNotFoundError naming the file and what is wrong."""
    folder = Path(folder)
    path = folder / CLASSIFIER_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {folder} a folder written by scripts/finetune_spam.py? "
                                f"(it holds the trained classifier and its {CLASSIFIER_FILE})")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}); re-run scripts/finetune_spam.py to write it again") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        found = info.get("format") if isinstance(info, dict) else type(info).__name__
        raise ValueError(f"{path} is not a {FORMAT} file (format {found!r})")
    missing = [k for k in REQUIRED_KEYS if k not in info]
    if missing:
        raise ValueError(f"{path} lacks {', '.join(repr(k) for k in missing)}; the file was edited or damaged: "
                         f"re-run scripts/finetune_spam.py to write it again")
    for key, (ok, expected) in FIELD_CHECKS.items():
        if not ok(info[key]):
            raise ValueError(f"{path}: field {key!r} is {info[key]!r}, expected {expected}; the file was edited or "
                             f"damaged: re-run scripts/finetune_spam.py to write it again")
    return info


def check_fingerprint(model, info: dict, folder: str | Path) -> None:
    """ValueError when `model` (the base, before its head is replaced) is not the base the classifier
    was trained on: another architecture (the config fields that differ are named), or other weights.
    A folder saved before fingerprints were recorded is not checked."""
    saved_cfg, cfg = info.get("base_config"), getattr(model, "cfg", None)
    if saved_cfg and hasattr(cfg, "to_dict"):
        mine = cfg.to_dict()
        diff = [f"{k}={v!r} (this base: {mine.get(k)!r})" for k, v in saved_cfg.items()
                if k not in ("drop_rate",) and mine.get(k) != v]
        if diff:
            raise ValueError(f"{folder} was trained on another base model: {', '.join(diff)}; use the base it was "
                             f"trained on ({info['base']})")
    saved = info.get("base_fingerprint")
    if not saved:
        return
    mine = base_fingerprint(model)
    if mine is None or mine["sha256"] == saved["sha256"]:
        return
    theirs = saved.get("tensors", {})
    differ = sorted(n for n in set(theirs) | set(mine["tensors"]) if theirs.get(n) != mine["tensors"].get(n))
    raise ValueError(f"{folder} was trained on another base model (weights fingerprint differs in {len(differ)} of "
                     f"{len(theirs)} tensors, e.g. {differ[:3]}): use the base it was trained on ({info['base']}) "
                     f"or fine-tune on this one")


def load_classifier(folder: str | Path, base: str | None = None, device="cpu"):
    """(model in eval mode, classifier.json dict) from a run folder.
    base: use this base model instead of the one recorded (it must be the same model: checked)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    info = read_classifier_info(folder)
    model = load_base(base or info["base"], attention=info["attention"], drop_rate=0.0, seed=info["base_seed"])
    check_fingerprint(model, info, folder)
    if info["method"] == "lora":
        from lora import load_adapter

        # Re-applies LoRA with the saved settings, restores the head, and checks the base once more
        # (config and weights fingerprint, lora/adapters.py).
        load_adapter(model, folder)
    else:
        add_classification_head(model, num_classes=len(info["labels"]))
        path = folder / info["weights"]
        try:
            tensors = load_file(str(path))
        except FileNotFoundError:
            raise FileNotFoundError(f"{path} not found: the run folder is incomplete; re-run "
                                    f"scripts/finetune_spam.py") from None
        except (SafetensorError, OSError, ValueError) as err:
            raise ValueError(f"{path} is not a readable safetensors file (truncated or corrupt: {err}); re-run "
                             f"scripts/finetune_spam.py to write it again") from None
        expected = dict(model.named_parameters())
        unknown = sorted(set(tensors) - set(expected))
        if unknown:
            raise ValueError(f"{path} does not fit the base {info['base']}: unknown tensors {unknown[:5]}")
        for name, t in tensors.items():
            if t.shape != expected[name].shape:
                raise ValueError(f"{path}: {name} has shape {tuple(t.shape)}, the base "
                                 f"{info['base']} expects {tuple(expected[name].shape)}")
        model.load_state_dict(tensors, strict=False)
    return model.to(device).eval(), info


def classify_texts(model, info: dict, texts: list[str]) -> list[dict]:
    """[{label, p, truncated, tokens}] for each text: softmax over the classes at the last token,
    computed on the model's device; texts longer than the training padding keep their start."""
    limit = min(int(info["max_length"]), model.cfg.context_length)
    results = []
    for probs, truncated, n_tokens in predict_texts(model, texts, limit):
        k = int(probs.argmax())
        results.append({"label": info["labels"][k], "p": float(probs[k]), "truncated": truncated, "tokens": n_tokens})
    return results


def format_result(r: dict, text: str) -> str:
    """One line for one classify_texts result: the label, its probability, a note when the text was cut, the
    text (at most 80 characters shown), e.g. `spam (p=1.00)\tYou won a free cruise, call now`."""
    cut = f"  [truncated to its first {r['tokens']} tokens]" if r["truncated"] else ""
    shown = text if len(text) <= 80 else text[:77] + "..."
    return f"{r['label']} (p={r['p']:.2f}){cut}\t{shown}"


__all__ = ["CLASSIFIER_FILE", "FORMAT", "WEIGHTS_FILE", "check_fingerprint", "check_out_folder", "classifier_info",
           "classify_texts", "format_result", "is_quick_run", "load_classifier", "read_classifier_info", "run_folder",
           "save_classifier", "write_classifier"]
