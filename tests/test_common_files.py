"""common/files.py: atomic files and folders, orphan clean-up, the folder lock."""

import os
import stat
import subprocess
import sys

import pytest

from common.files import (FolderLocked, atomic_folder, atomic_write, atomic_write_bytes, atomic_write_text,
                          lock_path, remove_orphaned_temp_files)


def _dead_pid() -> int:
    """The pid of a process that has exited."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_atomic_write_names_its_temp_file_and_replaces_on_success(tmp_path):
    path = tmp_path / "notes.txt"
    with atomic_write(path) as tmp:
        assert tmp.parent == tmp_path
        name, pid, random, suffix = tmp.name[1:].rsplit(".", 3)
        assert (name, pid, suffix) == ("notes.txt", str(os.getpid()), "tmp") and len(random) == 8
        tmp.write_text("new")
        assert not path.exists()  # nothing under the final name until the block ends
    assert path.read_text() == "new" and os.listdir(tmp_path) == ["notes.txt"]


def test_atomic_write_killed_midway_leaves_the_old_file(tmp_path):
    path = atomic_write_text(tmp_path / "notes.txt", "old")
    for interruption in (RuntimeError("killed"), KeyboardInterrupt()):
        with pytest.raises(type(interruption)):
            with atomic_write(path) as tmp:
                tmp.write_text("half")
                raise interruption
        assert path.read_text() == "old" and os.listdir(tmp_path) == ["notes.txt"]


def test_atomic_write_gives_the_permissions_of_a_plain_open(tmp_path):
    new = atomic_write_bytes(tmp_path / "new.bin", b"x")
    assert stat.S_IMODE(new.stat().st_mode) == 0o666 & ~_umask()
    kept = tmp_path / "private.json"
    kept.write_text("{}")
    kept.chmod(0o600)  # the user's choice survives a re-save, as with open(path, "w")
    atomic_write_text(kept, "[]")
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600 and kept.read_text() == "[]"


@pytest.mark.skipif(os.name != "posix", reason="orphan clean-up is POSIX only")
def test_orphan_cleanup_removes_only_dead_writers_files(tmp_path):
    dead = _dead_pid()
    orphan = tmp_path / f".model.safetensors.{dead}.abcd1234.tmp"
    live = tmp_path / f".model.safetensors.{os.getppid()}.efab5678.tmp"  # the writer still runs
    mine = tmp_path / f".model.safetensors.{os.getpid()}.0a0b0c0d.tmp"
    other = tmp_path / f".model.safetensors.json.{dead}.12345678.tmp"  # another target's orphan
    unrelated = tmp_path / ".model.safetensors.notapid.abcd.tmp"
    orphan_folder = tmp_path / f".adapter.{dead}.deadbeef.tmp"
    for p in (orphan, live, mine, other, unrelated):
        p.write_bytes(b"partial")
    orphan_folder.mkdir()
    (orphan_folder / "weights.bin").write_bytes(b"partial")

    assert remove_orphaned_temp_files(tmp_path, "model.safetensors") == [orphan]
    assert live.exists() and mine.exists() and other.exists() and unrelated.exists()
    # Without a name: every dead writer's temporary file or folder in the folder.
    assert sorted(remove_orphaned_temp_files(tmp_path)) == sorted([orphan_folder, other])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in (live, mine, unrelated))


def test_atomic_write_removes_orphans_of_its_own_target(tmp_path):
    orphan = tmp_path / f".notes.txt.{_dead_pid()}.abcd1234.tmp"
    orphan.write_text("half")
    atomic_write_text(tmp_path / "notes.txt", "done")
    assert os.listdir(tmp_path) == ["notes.txt"]


def test_atomic_folder_swaps_in_a_complete_folder(tmp_path):
    out = tmp_path / "adapter"
    with atomic_folder(out) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(f".adapter.{os.getpid()}.") and tmp.name.endswith(".tmp")
        assert lock_path(out).read_text().strip() == str(os.getpid())
        atomic_write_text(tmp / "config.json", "1")
        assert not out.exists()
    assert sorted(os.listdir(out)) == ["config.json"] and os.listdir(tmp_path) == ["adapter"]
    # A second result replaces the first one whole: no file of the old one is left over.
    with atomic_folder(out) as tmp:
        atomic_write_text(tmp / "weights.bin", "2")
        assert (out / "config.json").read_text() == "1"  # the previous result stays until the new one is done
    assert os.listdir(out) == ["weights.bin"] and os.listdir(tmp_path) == ["adapter"]


def test_atomic_folder_killed_midway_keeps_the_previous_result(tmp_path):
    out = tmp_path / "adapter"
    with atomic_folder(out) as tmp:
        atomic_write_text(tmp / "config.json", "old")
    for interruption in (RuntimeError("killed"), KeyboardInterrupt()):
        with pytest.raises(type(interruption)):
            with atomic_folder(out) as tmp:
                atomic_write_text(tmp / "config.json", "new")
                raise interruption
        assert (out / "config.json").read_text() == "old" and os.listdir(out) == ["config.json"]
        assert os.listdir(tmp_path) == ["adapter"]  # neither the temporary folder nor the lock is left


def test_atomic_folder_refuses_a_second_writer(tmp_path):
    out = tmp_path / "adapter"
    with atomic_folder(out) as tmp:
        atomic_write_text(tmp / "a.txt", "first")
        with pytest.raises(FolderLocked, match=rf"adapter is being written by another process \(pid {os.getpid()}\)"):
            with atomic_folder(out):
                pass
    assert os.listdir(out) == ["a.txt"]  # the refused writer broke nothing

    # Another live process holds the lock: refused, and the message names the folder and its pid.
    holder = os.getppid()
    lock_path(out).write_text(f"{holder}\n")
    with pytest.raises(FolderLocked) as refused:
        with atomic_folder(out):
            pass
    assert refused.value.pid == holder and refused.value.path == out and str(out) in str(refused.value)
    assert lock_path(out).read_text().strip() == str(holder)  # not someone else's to remove


@pytest.mark.skipif(os.name != "posix", reason="a dead pid can only be checked on POSIX")
def test_atomic_folder_takes_over_a_stale_lock(tmp_path):
    out = tmp_path / "adapter"
    lock_path(out).write_text(f"{_dead_pid()}\n")  # a writer that was killed
    with atomic_folder(out) as tmp:
        assert lock_path(out).read_text().strip() == str(os.getpid())
        atomic_write_text(tmp / "a.txt", "mine")
    assert (out / "a.txt").read_text() == "mine" and not lock_path(out).exists()


@pytest.mark.skipif(os.name != "posix", reason="a dead pid can only be checked on POSIX")
def test_atomic_folder_repairs_a_swap_killed_between_the_renames(tmp_path):
    # Killed after moving the old folder aside and before moving the new one in: the next write
    # puts the old one back first, so a failing new write still leaves the previous result.
    out = tmp_path / "adapter"
    aside = tmp_path / f".adapter.{_dead_pid()}.abcd1234.old"
    aside.mkdir()
    (aside / "a.txt").write_text("previous")
    with pytest.raises(RuntimeError):
        with atomic_folder(out):
            raise RuntimeError("killed")
    assert (out / "a.txt").read_text() == "previous" and os.listdir(tmp_path) == ["adapter"]


def test_common_imports_nothing_of_the_project():
    """common/ is the bottom floor: gpt/, lora/, classify/ and plots/ build on it, never the other way."""
    import ast
    from pathlib import Path

    for path in (Path(__file__).resolve().parent.parent / "common").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            modules = ([a.name for a in node.names] if isinstance(node, ast.Import)
                       else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for module in modules:
                assert module.split(".")[0] not in {"gpt", "lora", "classify", "plots", "peft_methods"}, (path, module)
