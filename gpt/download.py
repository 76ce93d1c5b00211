"""Download OpenAI's GPT-2 weights into a local cache, for readers who have the internet.

The four released sizes are public on the Hugging Face Hub, in the safetensors layout that
`gpt/weights.py` reads:

    https://huggingface.co/openai-community/{gpt2,gpt2-medium,gpt2-large,gpt2-xl}/resolve/main/model.safetensors
    https://huggingface.co/openai-community/{gpt2,gpt2-medium,gpt2-large,gpt2-xl}/resolve/main/config.json

(gpt2-small is about 0.5 GB, gpt2-xl about 6 GB.) Each model goes into its own folder of the
cache, `$LORA_FROM_SCRATCH_CACHE/<name>/` or, when that variable is unset,
`~/.cache/lora-from-scratch/<name>/`.

`urllib.request` streams the file, with a tqdm progress bar, into a temporary file in the
destination folder (common.files.atomic_write), and `os.replace` moves it into place, so an
interrupted download never leaves a half-written `model.safetensors` behind.

About the checksum, honestly: this project was written on machines without internet access,
so it does not ship the upstream sha256 of the checkpoints (we could not verify one offline,
and a wrong hard-coded hash would be worse than none). Instead the sha256 of the file as
downloaded is recorded next to it, in `model.safetensors.sha256`, and every later load
(`gpt.weights.load_gpt2_state_dict`) checks the file against it. That catches a file that
was truncated, corrupted or replaced after the download; it cannot prove that the download
itself was what OpenAI published (that is what TLS to huggingface.co is for). If you have a
hash you trust, pass it: `download_file(url, dest, expected_sha256=...)`.

Command line:

    python -m gpt.download gpt2-small            # or gpt2-medium, gpt2-large, gpt2-xl
"""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from common.cli import ArgumentParser, UserError, run_main
from common.files import atomic_write, atomic_write_text

# Our preset name -> the repository name on the Hub.
HF_REPOS = {
    "gpt2-small": "gpt2",  # 124M
    "gpt2-medium": "gpt2-medium",  # 355M
    "gpt2-large": "gpt2-large",  # 774M
    "gpt2-xl": "gpt2-xl",  # 1558M
}
URL_TEMPLATE = "https://huggingface.co/openai-community/{repo}/resolve/main/{filename}"
FILES = ("config.json", "model.safetensors")
WEIGHTS_FILE = "model.safetensors"
CHECKSUM_SUFFIX = ".sha256"
CACHE_ENV = "LORA_FROM_SCRATCH_CACHE"

# What a missing network looks like from urllib: DNS failure, refused connection, timeout
# (all wrapped in URLError by urlopen), or the connection dropping in the middle of a read.
NETWORK_ERRORS = (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException)


class OfflineError(UserError, RuntimeError):
    """The file could not be fetched because there is no network (its message says what to do).
    A UserError: a script's run_main prints it as one line, without a traceback."""


def cache_dir() -> Path:
    """The cache folder: $LORA_FROM_SCRATCH_CACHE, else ~/.cache/lora-from-scratch."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "lora-from-scratch"


def _check_name(name: str) -> None:
    if name not in HF_REPOS:
        raise ValueError(f"unknown GPT-2 checkpoint {name!r}; choose one of {sorted(HF_REPOS)}")


def model_dir(name: str, cache: str | Path | None = None) -> Path:
    """Where the files of checkpoint `name` ("gpt2-small", ...) live in the cache."""
    _check_name(name)
    return (Path(cache).expanduser() if cache is not None else cache_dir()) / name


def file_urls(name: str) -> dict[str, str]:
    """{file name: public URL} for checkpoint `name`."""
    _check_name(name)
    return {f: URL_TEMPLATE.format(repo=HF_REPOS[name], filename=f) for f in FILES}


def manual_download_instructions(name: str, cache: str | Path | None = None) -> str:
    """How to fetch checkpoint `name` by hand and where to put the files."""
    lines = [f"To get GPT-2 {name!r} by hand, download these files on a machine with internet access:"]
    lines += [f"  {url}" for url in file_urls(name).values()]
    lines.append(f"and put them, with these file names, into {model_dir(name, cache)}/")
    lines.append(f"(the cache folder is ${CACHE_ENV}, else ~/.cache/lora-from-scratch); "
                 f"or put them into any folder and pass that folder to gpt.weights.load_gpt2.")
    return "\n".join(lines)


def sha256_file(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (checkpoints are up to 6 GB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def checksum_path(path: str | Path) -> Path:
    """`model.safetensors` -> `model.safetensors.sha256`."""
    path = Path(path)
    return path.with_name(path.name + CHECKSUM_SUFFIX)


def record_checksum(path: str | Path, digest: str | None = None) -> str:
    """Write the sha256 of `path` (computed unless given) next to it; returns it."""
    digest = digest or sha256_file(path)
    # sha256sum's format, so `sha256sum -c model.safetensors.sha256` works in the same folder.
    atomic_write_text(checksum_path(path), f"{digest}  {Path(path).name}\n")
    return digest


def verify_checksum(path: str | Path) -> bool:
    """Check `path` against the sha256 recorded next to it.

    Returns True when it matches, False when no checksum was recorded (files put there by
    hand); raises ValueError naming the file when it does not match.
    """
    path = Path(path)
    recorded_file = checksum_path(path)
    if not recorded_file.is_file():
        return False
    words = recorded_file.read_text().split()
    recorded = words[0] if words else ""
    actual = sha256_file(path)
    if actual != recorded:
        raise ValueError(
            f"{path} has sha256 {actual}, but {recorded_file.name} recorded {recorded!r} when it was "
            f"downloaded: the file was truncated, corrupted or replaced. Delete both files and "
            f"download again (python -m gpt.download <name> --force)."
        )
    return True


def download_file(url: str, dest: str | Path, expected_sha256: str | None = None, timeout: float = 60.0,
                  progress: bool = True, chunk_size: int = 1 << 20) -> str:
    """Stream `url` into `dest` atomically and return the file's sha256 (hex).

    The bytes go to a temporary file in dest's folder (same file system, so os.replace is an
    atomic rename); `dest` only ever exists complete. Raises ValueError when the sha256 differs
    from `expected_sha256` or fewer bytes than Content-Length arrived, RuntimeError when there
    is no network (OfflineError; the message says how to get the file by hand).
    """
    dest = Path(dest)
    digest = hashlib.sha256()
    received, total = 0, None
    with atomic_write(dest) as tmp, open(tmp, "wb") as out:  # any error below deletes the temporary file
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                length = response.headers.get("Content-Length")
                total = int(length) if length else None
                with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=dest.name,
                          disable=None if progress else True) as bar:
                    while chunk := response.read(chunk_size):
                        out.write(chunk)
                        digest.update(chunk)
                        received += len(chunk)
                        bar.update(len(chunk))
        except urllib.error.HTTPError as err:  # the server answered, with an error status
            raise RuntimeError(f"downloading {url} failed: HTTP {err.code} {err.reason}") from err
        except NETWORK_ERRORS as err:
            raise OfflineError(
                f"no network: could not download {url} ({err}).\n"
                f"Download it on a machine with internet access and save it as {dest}."
            ) from err
        if total is not None and received != total:
            raise ValueError(f"incomplete download of {url}: got {received:,} of {total:,} bytes")
        actual = digest.hexdigest()
        if expected_sha256 is not None and actual != expected_sha256.lower():
            raise ValueError(
                f"sha256 mismatch for {url}: expected {expected_sha256}, got {actual}; "
                f"the download is corrupt, nothing was written to {dest}"
            )
    return actual


def download_gpt2(name: str, force: bool = False, progress: bool = True, cache: str | Path | None = None) -> Path:
    """Make sure checkpoint `name` is in the cache; download what is missing. Returns its folder.

    Files already there are kept (use force=True to download again); an existing
    model.safetensors is checked against its recorded sha256, or, when it has none (put there
    by hand), its sha256 is recorded now so later loads can check it.
    """
    folder = model_dir(name, cache)
    for filename, url in file_urls(name).items():
        dest = folder / filename
        if dest.is_file() and not force:
            if filename == WEIGHTS_FILE and not verify_checksum(dest):
                record_checksum(dest)
            continue
        try:
            digest = download_file(url, dest, progress=progress)
        except OfflineError as err:
            raise OfflineError(f"no network: could not download GPT-2 {name!r} ({err.__cause__}).\n"
                               + manual_download_instructions(name, cache)) from err.__cause__
        if filename == WEIGHTS_FILE:
            record_checksum(dest, digest)
    return folder


def main(argv=None) -> Path:
    parser = ArgumentParser(
        prog="python -m gpt.download",
        description="Download OpenAI's GPT-2 weights (safetensors) from the Hugging Face Hub into the cache.",
    )
    parser.add_argument("name", choices=sorted(HF_REPOS), help="which GPT-2 size")
    parser.add_argument("--cache-dir", default=None,
                        help=f"cache folder; None means ${CACHE_ENV}, else ~/.cache/lora-from-scratch")
    parser.add_argument("--force", action="store_true", help="download again even if the files exist")
    args = parser.parse_args(argv)
    folder = download_gpt2(args.name, force=args.force, cache=args.cache_dir)
    print(f"GPT-2 {args.name} is in {folder}; load it with gpt.weights.load_gpt2({str(folder)!r})")
    return folder


if __name__ == "__main__":
    run_main(main)
