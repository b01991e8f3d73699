"""Every path under the output and input folders is resolved and checked here, and nowhere else.

A name that comes from a record or a request (an ``output_dir``, a file name, a subfolder) is joined to
its root, resolved (following symlinks) and accepted only when the result stays inside the root.
Nothing here imports Flask.
"""
from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path

from history import text

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
    if not text.is_valid(name):
        # A lone surrogate: no file name we serve or record has one, and the OS could not encode it.
        raise UnsafePath(f"{what} is not valid Unicode text")
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
    folder it stays inside; a folder that is itself a symlink is checked by link_target where it matters.
    """
    studio = safe_join(output_root, STUDIO_FOLDER)
    found: dict[str, Path | UnsafePath] = {}
    for output_dir in output_dirs:
        try:
            found[output_dir] = studio / check_output_dir(output_dir)
        except UnsafePath as error:
            found[output_dir] = error
    return found


@dataclass(frozen=True, eq=False)
class OutputRoots:
    """Each ComfyUI server's output folder: its own where STUDIO_COMFYUI_OUTPUT_DIRS gives one, else the shared one.

    A job's files are under the folder of the server that ran it (``comfyui_server`` in its record); a job
    with no server (the built-in executor's, an import) or of a server no longer configured uses the shared one.
    """

    shared: Path
    own: dict = field(default_factory=dict)  # server URL -> its folder
    servers: tuple = ()  # every configured server, in order: media URLs name a folder by its position

    def of(self, server: str | None) -> Path:
        """Answer the output folder of ``server`` (a ComfyUI URL, or None)."""
        return self.own.get(server, self.shared) if server else self.shared

    def every(self) -> list[Path]:
        """Every distinct output folder, the shared one first."""
        return list(dict.fromkeys([self.shared, *self.own.values()]))

    def position(self, server: str | None) -> int | None:
        """Answer the position that names ``server``'s own folder in a media URL, or None when it uses the shared one."""
        return self.servers.index(server) if server in self.own else None

    def at(self, position) -> Path | None:
        """Answer the own folder of the server at ``position`` (a media URL's ``server``), or None when there is none."""
        try:
            server = self.servers[int(position)]
        except (IndexError, TypeError, ValueError):
            return None
        return self.own.get(server) if int(position) >= 0 else None


def root_of(output_root, server: str | None) -> Path:
    """Answer the folder a job of ``server`` keeps its files in: ``output_root`` is a folder or OutputRoots."""
    return output_root.of(server) if isinstance(output_root, OutputRoots) else Path(output_root)


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


def link_target(entry: Path) -> Path | None:
    """Where a job folder that is a symlink leads (another folder directly in ``comfyui-studio/``), None when
    it is no link; raise UnsafePath when it leads anywhere else."""
    if not entry.is_symlink():
        return None
    try:
        target = entry.resolve(strict=False)
    except (OSError, RuntimeError) as error:
        raise UnsafePath(f"{entry.name} is a link that cannot be followed: {error}") from None
    if target.parent != entry.parent:
        raise UnsafePath(f"output_dir leads outside {STUDIO_FOLDER}/: {entry.name!r}")
    return target


def move_to_tombstone(entry: Path) -> bool:
    """Steps 1-2 of a delete: make ``.deleting-<name>/`` beside a job folder and move the folder in (one
    atomic rename; a link is moved as the link). Answer whether there was a folder to move.

    Run while the delete holds the record (jobs.delete_jobs), so a job is never without its files and
    still listed; a process killed after the move leaves the tombstone for the start-up sweep.
    """
    tombstone = tombstone_of(entry)
    if not os.path.lexists(entry):
        return False
    if not entry.is_symlink() and not entry.is_dir():
        raise UnsafePath(f"{entry.name} is not a folder")
    tombstone.mkdir(exist_ok=True)
    try:
        os.replace(entry, tombstone / entry.name)
    except FileNotFoundError:
        # Another process's start-up sweep dropped the tombstone while it was still empty: make it again.
        tombstone.mkdir(exist_ok=True)
        os.replace(entry, tombstone / entry.name)
    return True


def remove_listed_files(paths: list[Path], output_root: Path) -> tuple[int, int]:
    """Delete exactly these files (resolved inside the output folder by output_file), then every folder
    they leave empty, up to but never including the output folder; answer (files, bytes) removed.

    For jobs that have no folder of their own (prompts other ComfyUI clients queued): their files are
    wherever ComfyUI saved them. A file already gone is not an error; a link or a non-file is left alone.
    """
    root = Path(output_root).resolve()
    removed, freed = 0, 0
    parents = set()
    for path in paths:
        path = Path(path)
        if root not in path.parents:
            raise UnsafePath(f"{path.name} is outside the output folder")
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            continue
        if not stat.S_ISREG(info.st_mode):
            continue
        os.unlink(path)
        removed += 1
        freed += info.st_size
        parents.add(path.parent)
    for folder in sorted(parents, key=lambda folder: len(folder.parts), reverse=True):
        while folder != root and root in folder.parents:
            try:
                folder.rmdir()  # only an empty folder goes
            except OSError:
                break
            folder = folder.parent
    return removed, freed


def put_back(entry: Path) -> None:
    """Undo move_to_tombstone (the record could not be removed after all): the job stays whole."""
    tombstone = tombstone_of(entry)
    if os.path.lexists(tombstone / entry.name) and not os.path.lexists(entry):
        os.replace(tombstone / entry.name, entry)
    _drop_tombstone(tombstone)


@dataclass
class Cleared:
    """What clearing a tombstone removed, and what it could not (paths relative to the job folder)."""

    files: int = 0
    bytes: int = 0
    pending: list[str] = field(default_factory=list)


def clear_tombstone(entry: Path) -> Cleared:
    """Steps 3-4 of a delete: remove what the job folder's tombstone holds, then the tombstone.

    Links are removed as links, never followed. What cannot be removed (a read-only subfolder, say) is
    left in the tombstone and named in ``pending``; the start-up sweep (jobs.finish_interrupted_deletes)
    tries again. A file another process removed first is not an error: that is the goal.
    """
    tombstone = tombstone_of(entry)
    moved = tombstone / entry.name
    cleared = Cleared()

    def remove(path: str, is_folder: bool) -> None:
        try:
            size = 0 if is_folder else os.lstat(path).st_size
            (os.rmdir if is_folder else os.unlink)(path)
        except FileNotFoundError:
            return
        except OSError:
            if not (is_folder and _has_entries(path)):  # a folder that still holds files is pending through them
                cleared.pending.append(os.path.relpath(path, moved))
            return
        if not is_folder:
            cleared.files += 1
            cleared.bytes += size

    try:
        top = os.lstat(moved)
    except FileNotFoundError:
        top = None
    if top is not None and stat.S_ISDIR(top.st_mode):
        unreadable = []
        for dirpath, dirnames, filenames in os.walk(moved, topdown=False, onerror=unreadable.append):
            for name in filenames:
                remove(os.path.join(dirpath, name), is_folder=False)
            for name in dirnames:
                path = os.path.join(dirpath, name)
                remove(path, is_folder=not os.path.islink(path))
        cleared.pending.extend(os.path.relpath(error.filename, moved) for error in unreadable if error.filename)
        remove(str(moved), is_folder=True)
        if os.path.lexists(moved) and not cleared.pending:
            cleared.pending.append(".")
    elif top is not None:
        remove(str(moved), is_folder=False)  # a link (an alias of another folder) or a lone file
    _drop_tombstone(tombstone)
    return cleared


def _has_entries(folder: str) -> bool:
    try:
        with os.scandir(folder) as entries:
            return next(entries, None) is not None
    except OSError:
        return False


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
    job stays as it is. The caller finishes the others (records, then files, then the tombstone).
    """
    found = []
    for tombstone, name in _tombstones(output_root):
        folder = tombstone.parent / name
        if folder.is_dir() and not os.path.lexists(tombstone / name):
            _drop_tombstone(tombstone)
        else:
            found.append((folder, name))
    return found


def regular_file(path: Path, within: Path | None = None) -> os.stat_result | None:
    """The stat of ``path`` when it is a regular file, else None; nothing is opened.

    A FIFO, socket or device is not a file to read (opening a FIFO blocks until a writer comes). A symlink
    counts only when it leads to a regular file inside ``within``; without ``within``, never.
    """
    try:
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            if within is None:
                return None
            target = Path(path).resolve(strict=True)
            if Path(within).resolve() not in target.parents:
                return None
            st = os.stat(target)
    except (OSError, ValueError, RuntimeError):
        return None
    return st if stat.S_ISREG(st.st_mode) else None


class NotRegularFile(OSError):
    """A path that names a FIFO, socket, device or folder where a file was expected."""


def open_regular(path: Path):
    """Open a regular file for reading in binary; raise OSError (NotRegularFile for anything else).

    The open itself never blocks (O_NONBLOCK: a FIFO swapped in after a check cannot hang the thread),
    and the type is checked on the open file, so what is read is what was checked.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NotRegularFile(f"{path} is not a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def job_files(folder: Path) -> list[Path]:
    """The regular files directly in a job folder, by name; hidden names, links leading out and anything
    that is not a regular file are left out. Names are as on disk (shown through text.repair_text)."""
    found = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    for entry in entries:
        if entry.name.startswith("."):
            continue
        path = Path(folder) / entry.name
        if regular_file(path, within=folder) is not None:
            found.append(path)
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
