"""Every path under the output and input folders is resolved and checked here, and nowhere else.

A name that comes from a record or a request (an ``output_dir``, a file name, a subfolder) is joined to
its root, resolved (following symlinks) and accepted only when the result stays inside the root.
Nothing here imports Flask.
"""
from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

STUDIO_FOLDER = "comfyui-studio"
# What an output_dir may look like: one folder name, no separators, no leading dot.
OUTPUT_DIR_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class UnsafePath(ValueError):
    """A name that would leave its folder, or that is not a name at all."""


def _check_text(name: str, what: str) -> str:
    if not isinstance(name, str) or not name:
        raise UnsafePath(f"{what} must be a non-empty string")
    if "\x00" in name:
        raise UnsafePath(f"{what} contains a NUL byte")
    if "\\" in name:
        raise UnsafePath(f"{what} contains a backslash")
    if len(name) > 1024:
        raise UnsafePath(f"{what} is too long")
    return name


def safe_join(root: Path, *parts: str, what: str = "path") -> Path:
    """Join ``parts`` under ``root`` and return the resolved path; raise UnsafePath if it leaves root."""
    root = Path(root).resolve()
    relative = []
    for part in parts:
        if part in (None, ""):
            continue
        _check_text(part, what)
        if part.startswith("/") or os.path.isabs(part):
            raise UnsafePath(f"{what} must be relative: {part!r}")
        for piece in part.split("/"):
            if piece in ("", "."):
                continue
            if piece == "..":
                raise UnsafePath(f"{what} must not contain '..': {part!r}")
            relative.append(piece)
    candidate = root.joinpath(*relative).resolve()
    if candidate != root and root not in candidate.parents:
        raise UnsafePath(f"{what} leads outside its folder: {'/'.join(parts)!r}")
    return candidate


def check_output_dir(output_dir: str) -> str:
    """Return ``output_dir`` if it is one plain folder name; raise UnsafePath otherwise."""
    _check_text(output_dir, "output_dir")
    if not OUTPUT_DIR_PATTERN.match(output_dir) or ".." in output_dir:
        raise UnsafePath(f"output_dir must be one folder name of letters, digits, '_', '-' and '.': {output_dir!r}")
    return output_dir


def job_folder(output_root: Path, output_dir: str) -> Path:
    """The folder that holds one job's files: ``<output>/comfyui-studio/<output_dir>``."""
    check_output_dir(output_dir)
    folder = safe_join(output_root, STUDIO_FOLDER, output_dir, what="output_dir")
    studio = safe_join(output_root, STUDIO_FOLDER)
    if folder.parent != studio:
        raise UnsafePath(f"output_dir leads outside {STUDIO_FOLDER}/: {output_dir!r}")
    return folder


def job_folders(output_root: Path, output_dirs) -> dict[str, Path | UnsafePath]:
    """job_folder for many names, resolving ``comfyui-studio/`` once: each name's folder, or why it is refused.

    A name that passes check_output_dir has no separator and no '..', so joined to the resolved studio
    folder it stays inside; a folder that is itself a symlink is refused where it is removed (_clear_folder).
    """
    studio = safe_join(output_root, STUDIO_FOLDER)
    found: dict[str, Path | UnsafePath] = {}
    for output_dir in output_dirs:
        try:
            found[output_dir] = studio / check_output_dir(output_dir)
        except UnsafePath as error:
            found[output_dir] = error
    return found


def _ref_file(root: Path, ref: dict, what: str) -> Path:
    """Resolve a reference ``{filename, subfolder, type}`` to a file inside ``root``."""
    if not isinstance(ref, dict):
        raise UnsafePath("an output reference must be an object")
    filename = _check_text(ref.get("filename"), "filename")
    if "/" in filename:
        raise UnsafePath(f"filename must not contain '/': {filename!r}")
    return safe_join(root, ref.get("subfolder") or "", filename, what=what)


def output_file(output_root: Path, ref: dict) -> Path:
    """Resolve an output reference ``{filename, subfolder, type}`` to a file inside the output folder."""
    return _ref_file(output_root, ref, "output file")


def input_file(input_root: Path, name: str) -> Path:
    """Resolve a file name in the input folder."""
    _check_text(name, "input image")
    return safe_join(input_root, name, what="input image")


def folder_usage(folder: Path) -> tuple[int, int]:
    """Count the files under ``folder`` and their bytes (0, 0 when it is gone); symlinks are not followed."""
    files = 0
    size = 0
    if not folder.is_dir():
        return 0, 0
    for dirpath, _dirnames, filenames in os.walk(folder):
        for name in filenames:
            try:
                size += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                continue
            files += 1
    return files, size


def job_bytes(output_root: Path, output_dir: str | None, outputs: list | None) -> int:
    """The bytes of a job's files: its folder when it has one, else its output references (ComfyUI's own jobs)."""
    if output_dir:
        try:
            return folder_usage(job_folder(output_root, output_dir))[1]
        except UnsafePath:
            return 0
    size = 0
    for ref in outputs or []:
        if isinstance(ref, dict) and ref.get("type", "output") == "output":
            try:
                size += output_file(output_root, ref).stat().st_size
            except (UnsafePath, OSError):
                continue
    return size


TOMBSTONE_PREFIX = ".deleting-"


def tombstone_of(folder: Path) -> Path:
    """The hidden folder beside ``folder`` that holds it while it is being deleted."""
    return folder.with_name(f"{TOMBSTONE_PREFIX}{folder.name}")


def remove_folder(folder: Path, then=None) -> tuple[int, int]:
    """Delete a job folder and everything in it; return (files, bytes) removed. Missing is not an error.

    Crash-consistent, with ``then`` (the record's removal) run once the files are gone:
    1. make the tombstone ``.deleting-<name>/`` beside the folder, 2. move the folder into it (one atomic
    rename), 3. remove the moved folder, 4. ``then()``, 5. remove the empty tombstone. A process killed
    anywhere leaves the whole folder (1), or a tombstone while the record still exists (2-4), which the
    next delete of the job or the start-up sweep (jobs.finish_interrupted_deletes) carries on from, or an
    empty tombstone and no record (5). A removal that fails (permissions) puts back what is left and raises.
    """
    removed = _clear_folder(folder)
    if then is not None:
        then()
    _drop_tombstone(tombstone_of(folder))
    return removed


def remove_folders(folders: list[Path], then) -> dict[Path, tuple[int, int] | Exception]:
    """Delete many job folders as remove_folder deletes one, with one ``then(removed)`` for all that went.

    Steps 1-3 run for each folder, then ``then`` gets the folders whose files are gone (the caller removes
    their records in one transaction), then their tombstones go: a crash leaves each job as remove_folder
    would. Answers (files, bytes) per folder, or the error that kept it (it is then whole, as before).
    """
    results: dict[Path, tuple[int, int] | Exception] = {}
    for folder in folders:
        try:
            results[folder] = _clear_folder(folder)
        except (OSError, UnsafePath) as error:
            results[folder] = error
    cleared = [folder for folder, result in results.items() if not isinstance(result, Exception)]
    then(cleared)
    for folder in cleared:
        _drop_tombstone(tombstone_of(folder))
    return results


def _clear_folder(folder: Path) -> tuple[int, int]:
    """Steps 1-3 of remove_folder: the folder moved into its tombstone and removed there; (files, bytes)."""
    tombstone = tombstone_of(folder)
    moved = tombstone / folder.name
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        raise UnsafePath(f"{folder.name} is not a folder")
    if folder.exists():
        files, size = folder_usage(folder)
        tombstone.mkdir(exist_ok=True)
        try:
            os.replace(folder, moved)
        except FileNotFoundError:
            # Another process's start-up sweep dropped the tombstone while it was still empty: make it again.
            tombstone.mkdir(exist_ok=True)
            os.replace(folder, moved)
    else:
        files, size = folder_usage(moved)  # a delete that a crash interrupted, or nothing at all
    if moved.exists() or moved.is_symlink():
        try:
            _rmtree(moved)
        except OSError:
            if (moved.exists() or moved.is_symlink()) and not folder.exists():
                os.replace(moved, folder)
                _drop_tombstone(tombstone)
            raise
    return files, size


def _rmtree(path: Path) -> None:
    """shutil.rmtree, except that a file another process removed first is not an error (it is the goal)."""
    def ignore_vanished(function, name, error):
        if not isinstance(error, FileNotFoundError):
            raise error

    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=ignore_vanished)
    else:
        shutil.rmtree(path, onerror=lambda function, name, info: ignore_vanished(function, name, info[1]))


def _drop_tombstone(tombstone: Path) -> None:
    try:
        tombstone.rmdir()
    except OSError:
        pass  # gone already, or something else was put in it: the start-up sweep looks again


def _tombstones(output_root: Path) -> list[tuple[Path, str]]:
    """(tombstone, job folder name) for every delete in progress or interrupted under ``comfyui-studio/``."""
    studio = Path(output_root) / STUDIO_FOLDER
    try:
        entries = list(os.scandir(studio))
    except OSError:
        return []
    found = []
    for entry in entries:
        name = entry.name[len(TOMBSTONE_PREFIX):]
        if entry.name.startswith(TOMBSTONE_PREFIX) and entry.is_dir(follow_symlinks=False) and OUTPUT_DIR_PATTERN.match(name):
            found.append((studio / entry.name, name))
    return found


def interrupted_deletes(output_root: Path) -> list[tuple[Path, str]]:
    """(job folder, its name) for every delete a killed process left half done under ``comfyui-studio/``.

    A tombstone beside its job's whole folder never got the folder moved in: it is dropped here and the
    job stays as it is. The caller finishes the others (files, then records, then the tombstone).
    """
    found = []
    for tombstone, name in _tombstones(output_root):
        folder = tombstone.parent / name
        if folder.is_dir() and not (tombstone / name).exists():
            _drop_tombstone(tombstone)
        else:
            found.append((folder, name))
    return found


def job_files(folder: Path) -> list[Path]:
    """The regular files directly in a job folder, by name; hidden names and links leading out are left out."""
    found = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    for entry in entries:
        if entry.name.startswith("."):
            continue
        try:
            resolved = safe_join(folder, entry.name, what="file")
        except UnsafePath:
            continue
        if resolved.is_file():
            found.append(Path(folder) / entry.name)
    return sorted(found, key=lambda path: path.name)


def recent_job_folders(output_root: Path, limit: int = 100) -> list[Path]:
    """The newest job folders under ``comfyui-studio/`` by name (names start with their time), newest first."""
    studio = Path(output_root) / STUDIO_FOLDER
    try:
        entries = list(os.scandir(studio))
    except OSError:
        return []
    names = [
        entry.name
        for entry in entries
        if OUTPUT_DIR_PATTERN.match(entry.name) and ".." not in entry.name and entry.is_dir(follow_symlinks=False)
    ]
    return [studio / name for name in sorted(names, reverse=True)[:limit]]


def is_private(path: Path, root: Path, data_dir: Path) -> bool:
    """Whether a file resolved under ``root`` is the app's own data (database, secret key, cache).

    Only possible when a folder is set to the data dir or above it (STUDIO_INPUT_DIR=. beside ./data):
    then nothing inside the data dir is served, whatever its name.
    """
    root, data_dir, path = Path(root).resolve(), Path(data_dir).resolve(), Path(path).resolve()
    if root != data_dir and root not in data_dir.parents:
        return False
    return path == data_dir or data_dir in path.parents


def locate_ref(ref, output_dir: Path, input_dir: Path, data_dir: Path) -> tuple[str, str, Path] | None:
    """(kind, path relative to its folder, file) of an output or input reference that may be served.

    None when the reference is malformed, unsafe, names the app's own data, or is a ComfyUI ``temp``
    preview (those live outside both folders and are never served). The file may not exist.
    """
    if not isinstance(ref, dict):
        return None
    kind = ref.get("type") or "output"
    if kind not in ("output", "input"):
        return None
    filename = ref.get("filename")
    subfolder = ref.get("subfolder") or ""
    if not isinstance(filename, str) or not isinstance(subfolder, str):
        return None
    pieces = [piece for piece in subfolder.split("/") if piece not in ("", ".")]
    relative = "/".join(pieces + [filename])
    try:
        if kind == "output":
            root = output_dir
            source = output_file(root, ref)
        else:
            if "/" in filename:
                return None
            root = input_dir
            source = input_file(root, relative)
    except UnsafePath:
        return None
    if is_private(source, root, data_dir):
        return None
    return kind, relative, source


# ---- running jobs: ComfyUI's temp/ folder and uploaded input images ----------------------------
INPUT_NAME_PATTERN = re.compile(r"[^A-Za-z0-9_-]+")


def temp_folder(output_root: Path) -> Path:
    """Where previews (type ``temp``) go: ComfyUI's ``temp/`` beside its ``output/``."""
    return Path(output_root).resolve().parent / "temp"


def store_input_image(input_root: Path, original_name: str | None, extension: str, data: bytes) -> str:
    """Write an uploaded (already checked) image into the input folder under a new unique name; return it."""
    stem = INPUT_NAME_PATTERN.sub("-", Path(str(original_name or "upload")).stem).strip("-_")[:48] or "upload"
    extension = INPUT_NAME_PATTERN.sub("", extension)[:8] or "png"
    root = Path(input_root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    while True:
        name = f"{stem}_{os.urandom(4).hex()}.{extension}"
        path = safe_join(root, name, what="input image")
        try:
            with open(path, "xb") as handle:  # never over an existing file
                handle.write(data)
        except FileExistsError:
            continue
        return name
