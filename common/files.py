"""Writing files and folders atomically: the one way every module and script here saves a result.

An interrupted save (an exception, Ctrl-C, a full disk, SIGKILL, a power cut) must never leave a
half-written file where a good one was. So every write goes to a temporary file in the target's
folder, named

    .{name}.{pid}.{random}.tmp          e.g. .model.safetensors.4711.k3j9x2.tmp

is flushed to disk (fsync), and is then renamed onto the target with `os.replace`, which is atomic
on POSIX and Windows as long as both names are on one file system (hence the same folder). A
process killed outright cannot delete its own temporary file; `remove_orphaned_temp_files` knows the
pattern and deletes those whose process no longer runs (the next save to the same target does it).

A result that is a whole folder (an adapter: weights + config) is written the same way with
`atomic_folder`: into a sibling temporary folder, swapped in when complete. A lock file
`.{name}.lock` beside the folder holds the writer's pid, so a second writer is refused (FolderLocked)
instead of interleaving its files with the first one's.

    with atomic_write("run/model.safetensors") as tmp:   # tmp: a Path in run/
        save_file(tensors, tmp)                            # a crash here leaves the old file as it was
    atomic_write_text("run/results.json", text)
    with atomic_folder("runs/spam-lora") as tmp:           # tmp: a new, empty folder beside it
        atomic_write_bytes(tmp / "adapter.safetensors", blob)
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import stat
from pathlib import Path

TEMP_SUFFIX = ".tmp"
# .{name}.{pid}.{random}.tmp: the name may itself contain dots, the pid is digits, the random part is not.
_TEMP_PATTERN = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.(?P<random>[a-z0-9]+)\.tmp$")
_ASIDE_SUFFIX = ".old"  # a previous folder moved aside during the swap (kept until the new one is in)


class FolderLocked(RuntimeError):
    """Another process (pid) is writing the same folder right now."""

    def __init__(self, path: Path, pid: int, lock: Path):
        self.path, self.pid, self.lock = Path(path), pid, Path(lock)
        super().__init__(f"{self.path} is being written by another process (pid {pid}); wait until it finishes or "
                         f"stop it. If no such process runs, delete the lock file {self.lock}")


def temp_name(name: str, pid: int | None = None) -> str:
    """A fresh temporary name for target `name`: .{name}.{pid}.{random}.tmp"""
    return f".{name}.{os.getpid() if pid is None else pid}.{secrets.token_hex(4)}{TEMP_SUFFIX}"


def _new_temp_file(path: Path) -> tuple[Path, int]:
    """Create an empty temporary file beside `path`; return it and the mode a plain open() would give
    the target: the existing target's mode when there is one (a user's chmod survives a re-save),
    else 0666 minus the umask (os.open applies the umask itself; mkstemp would make it 0600)."""
    while True:
        tmp = path.parent / temp_name(path.name)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:  # 32 random bits collided: draw again
            continue
        os.close(fd)
        mode = stat.S_IMODE((path if path.is_file() else tmp).stat().st_mode)
        return tmp, mode


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike):
    """Yield a temporary Path beside `path`; on success fsync it and rename it onto `path`; on any
    error (KeyboardInterrupt included) delete it and leave `path` as it was. Creates the folder.

    Temporary files that earlier, killed writes to the same `path` left behind are removed first
    (only those whose process is gone)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_orphaned_temp_files(path.parent, path.name)
    tmp, mode = _new_temp_file(path)
    try:
        yield tmp
        _fsync_file(tmp)
        os.chmod(tmp, mode)  # the writer may have replaced the file (safetensors writes its own 0600 one)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically; returns the path."""
    with atomic_write(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write `text` to `path` atomically (UTF-8 by default); returns the path."""
    with atomic_write(path) as tmp:
        tmp.write_text(text, encoding=encoding)
    return Path(path)


def write_record(folder: str | os.PathLike, name: str, record: dict, markdown: str, plot=None) -> Path:
    """A comparison script's results in `folder` (made if missing): <name>.json (the record), <name>.md (its tables)
    and, with `plot(record, path)`, <name>.png, each written atomically. Returns the folder."""
    import json

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / f"{name}.json", json.dumps(record, indent=1) + "\n")
    atomic_write_text(folder / f"{name}.md", markdown)
    if plot is not None:
        plot(record, folder / f"{name}.png")
    return folder


def process_is_alive(pid: int) -> bool:
    """True when a process with this pid exists on this machine (POSIX: signal 0 checks, sends nothing)."""
    if pid <= 0:
        return False
    if os.name != "posix":  # os.kill(pid, 0) would terminate the process on Windows: assume it runs
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def _parse_temp(name: str):
    """(target name, pid) of a temporary name `.{name}.{pid}.{random}.tmp`, else None."""
    m = _TEMP_PATTERN.match(name)
    return (m["name"], int(m["pid"])) if m else None


def remove_orphaned_temp_files(folder: str | os.PathLike, name: str | None = None) -> list[Path]:
    """Delete the temporary files and folders (`.{name}.{pid}.{random}.tmp`) in `folder` whose writer
    process no longer runs; with `name`, only those of that target. Returns the removed paths.

    A temporary file of a live process (this one included) is never touched, so a save running in
    another process is not disturbed. POSIX only (elsewhere no process can be checked; nothing is
    removed). Pids are this machine's: do not share a folder between machines writing at once.
    """
    folder = Path(folder)
    if os.name != "posix" or not folder.is_dir():
        return []
    removed = []
    for candidate in sorted(folder.glob(f".{name if name is not None else '*'}.*{TEMP_SUFFIX}")):
        parsed = _parse_temp(candidate.name)
        if parsed is None or (name is not None and parsed[0] != name):
            continue  # not ours, or another target whose name starts the same (model.safetensors.json)
        pid = parsed[1]
        if pid == os.getpid() or process_is_alive(pid):
            continue
        if candidate.is_dir() and not candidate.is_symlink():
            shutil.rmtree(candidate, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                candidate.unlink()
        removed.append(candidate)
    return removed


def lock_path(path: str | os.PathLike) -> Path:
    """The lock file of folder `path`: `.{name}.lock` beside it."""
    path = Path(path)
    return path.parent / f".{path.name}.lock"


def _read_pid(lock: Path) -> int | None:
    try:
        text = lock.read_text().strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() else 0  # 0: unreadable, treated as a dead writer's


@contextlib.contextmanager
def folder_lock(path: str | os.PathLike):
    """Hold `.{name}.lock` beside `path` for the block; raise FolderLocked if a live process holds it.

    The lock file is created complete (pid written to a temporary file, then hard-linked onto the
    lock name, which fails if it exists), so a reader never sees an empty lock. A lock whose process
    is gone (killed) is stale and is taken over. Two writers that both find the same stale lock in
    the same instant can both take it over; that needs a killed writer and a race, and is accepted.
    """
    path = Path(path)
    lock = lock_path(path)
    lock.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(100):
        if _try_create_lock(lock):
            break
        pid = _read_pid(lock)
        if pid is None:  # released meanwhile: try again
            continue
        if pid == os.getpid() or process_is_alive(pid):
            raise FolderLocked(path, pid, lock)
        with contextlib.suppress(FileNotFoundError):  # stale: its writer was killed
            lock.unlink()
    else:
        raise FolderLocked(path, _read_pid(lock) or 0, lock)
    try:
        yield lock
    finally:
        if _read_pid(lock) == os.getpid():
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()


def _try_create_lock(lock: Path) -> bool:
    """Atomically create `lock` holding this pid; False if it already exists."""
    tmp = lock.parent / temp_name(lock.name)
    tmp.write_text(f"{os.getpid()}\n")
    try:
        os.link(tmp, lock)  # atomic, and fails when the lock exists
        return True
    except FileExistsError:
        return False
    except OSError:  # a file system without hard links: O_EXCL instead (a reader may see it empty briefly)
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()}\n")
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _recover_folder(path: Path) -> None:
    """Finish the swap of a writer killed between "old folder aside" and "new folder in": bring the
    previous result back if `path` is missing, else delete it. Aside folders: .{name}.{pid}.{random}.old"""
    for aside in sorted(path.parent.glob(f".{path.name}.*{_ASIDE_SUFFIX}")):
        parsed = _parse_temp(aside.name[: -len(_ASIDE_SUFFIX)] + TEMP_SUFFIX)
        if parsed is None or parsed[0] != path.name or (parsed[1] != os.getpid() and process_is_alive(parsed[1])):
            continue
        if not path.exists():
            os.replace(aside, path)
        elif aside.is_dir():
            shutil.rmtree(aside, ignore_errors=True)
        else:
            aside.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike):
    """Yield a new, empty temporary folder beside `path` (`.{name}.{pid}.{random}.tmp/`); fill it in
    the block. On success its files are flushed to disk and it replaces `path`: an existing `path`
    is renamed aside, the new folder renamed in, the old one deleted, so the previous result stays
    whole until the new one is complete (between the two renames `path` is briefly absent; a writer
    killed there is repaired by the next write). On error the temporary folder is deleted and `path`
    is left as it was.

    While the block runs, `.{name}.lock` beside `path` holds this process's pid: a second writer to
    the same folder gets FolderLocked (naming the folder and the pid), not a mix of two results.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with folder_lock(path):
        _recover_folder(path)
        remove_orphaned_temp_files(path.parent, path.name)
        tmp = path.parent / temp_name(path.name)
        tmp.mkdir()  # mode 0777 minus the umask, like any folder the user makes
        aside = None
        try:
            yield tmp
            for f in sorted(tmp.rglob("*")):
                if f.is_file() and not f.is_symlink():
                    _fsync_file(f)
                elif f.is_dir():
                    _fsync_dir(f)
            _fsync_dir(tmp)
            if path.exists() or path.is_symlink():
                aside = path.parent / (temp_name(path.name)[: -len(TEMP_SUFFIX)] + _ASIDE_SUFFIX)
                os.replace(path, aside)
            os.replace(tmp, path)
            _fsync_dir(path.parent)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            if aside is not None and aside.exists() and not path.exists():
                os.replace(aside, path)  # failed between the two renames: the previous result goes back
            raise
        if aside is not None:
            if aside.is_dir() and not aside.is_symlink():
                shutil.rmtree(aside, ignore_errors=True)
            else:
                aside.unlink(missing_ok=True)


def _fsync_file(path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(folder) -> None:
    """Make a rename durable (POSIX; Windows cannot open a folder for fsync)."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some file systems do not support fsync on a folder
        pass
    finally:
        os.close(fd)
