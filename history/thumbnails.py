"""Pillow thumbnails and their on-disk cache. No Flask import.

A thumbnail is a 120x120 WebP (shown at 60 CSS px, so sharp on 2x screens) cut from the centre of the
source's first frame, upright by its EXIF orientation. It is made once and kept under a key built from
the source's resolved path, mtime_ns, size and RECIPE_VERSION, so a changed source (or a changed recipe)
gets a new thumbnail and an unchanged one is never decoded again. The overlay's preview is the same
recipe without the crop, within 720x720 (``recipe="preview"``). Files that cannot be thumbnailed
(missing, unreadable, truncated, not an image, too many pixels) give None: the caller shows a placeholder.
"""
from __future__ import annotations

import hashlib
import logging
import os
import stat
import tempfile
import threading
import time
from pathlib import Path

from PIL import Image
from PIL import ImageOps

from history import files

log = logging.getLogger(__name__)

# Bump when the output of render() changes: every cached thumbnail and every ?v= URL changes with it.
RECIPE_VERSION = 1
SIZE = (120, 120)
# The overlay's preview: the whole picture (aspect kept, never cropped) within 720x720, drawn at up to
# 360 CSS px, so sharp on 2x screens without shipping the full-size file. Its own key, so the card's
# thumbnails (and their URLs) stay as they are.
PREVIEW = "preview"
PREVIEW_SIZE = (720, 720)
RECIPES = ("card", PREVIEW)
WEBP_QUALITY = 80
# Our own ceiling, checked from the header before any pixel is decoded. Pillow's MAX_IMAGE_PIXELS
# (89 MP) only warns below twice its value; 64 MP (8000x8000) already covers upscaled 8K outputs.
MAX_PIXELS = 64 * 1024 * 1024
# Extensions worth handing to Pillow; anything else (mp4, webm, txt ...) gets the placeholder unread.
THUMBNAIL_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff")
TEMP_PREFIX = ".tmp-"
# A 64 MP decode holds ~200 MB; with a 64-thread server a cold page of huge files could ask for
# many at once. This bounds the decodes in flight per process (memory is per process, not per app).
_DECODES = threading.BoundedSemaphore(4)


def can_thumbnail(name: str) -> bool:
    """Whether a file name has an extension Pillow is asked to read."""
    return str(name).lower().endswith(THUMBNAIL_EXTENSIONS)


def source_version(st: os.stat_result) -> str:
    """A short token that changes whenever the source (or the recipe) changes: the ``?v=`` of a URL."""
    return f"{RECIPE_VERSION}.{st.st_mtime_ns:x}.{st.st_size:x}"


def file_version(path: Path) -> str | None:
    """The version token of a regular file, or None when it is missing or not a file."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    return source_version(st)


def cache_path(cache_dir: Path, resolved: Path, st: os.stat_result, recipe: str = "card") -> Path:
    """Where the thumbnail (or preview) of ``resolved`` at this version lives in the cache."""
    key_text = f"{resolved}\x00{st.st_mtime_ns}\x00{st.st_size}\x00{RECIPE_VERSION}"
    if recipe != "card":
        key_text += f"\x00{recipe}"
    key = hashlib.sha256(key_text.encode("utf-8", "surrogateescape")).hexdigest()[:40]
    return Path(cache_dir) / key[:2] / f"{key}.webp"


def make_thumbnail(source: Path, cache_dir: Path, recipe: str = "card") -> Path | None:
    """Return the cached thumbnail (or, with ``recipe="preview"``, the preview) of ``source``, making it
    on first use; None when it cannot be made."""
    try:
        resolved = Path(source).resolve(strict=True)
        # open_regular refuses a FIFO, socket or device without blocking on it. Key and pixels come from
        # the same open file, so a source replaced meanwhile cannot leave its new pixels under its old key.
        with files.open_regular(resolved) as handle:
            st = os.fstat(handle.fileno())
            target = cache_path(cache_dir, resolved, st, recipe)
            if target.is_file():
                return target
            with _DECODES:
                if target.is_file():  # another thread made it while this one waited
                    return target
                thumbnail = render(handle, recipe)
    except (OSError, ValueError, RuntimeError) as error:
        # Missing, unreadable, a directory, a bad name (NUL), a symlink loop.
        log.debug("no thumbnail for %s: %s", source, error)
        return None
    if thumbnail is None:
        return None
    try:
        return _write(thumbnail, target)
    except OSError as error:
        log.warning("thumbnail cache %s is not writable: %s", cache_dir, error)
        return None
    finally:
        thumbnail.close()


def render(handle, recipe: str = "card") -> Image.Image | None:
    """Decode an open image file into the 120x120 thumbnail (or the preview); None when it is not a usable image."""
    try:
        with Image.open(handle) as image:
            width, height = image.size
            limit = min(MAX_PIXELS, Image.MAX_IMAGE_PIXELS or MAX_PIXELS)  # whichever is stricter
            if width < 1 or height < 1 or width * height > limit:
                log.info("no thumbnail for %s: %dx%d is over the pixel limit", getattr(handle, "name", "?"), width, height)
                return None
            if image.format == "JPEG":
                # Let libjpeg decode at 1/2, 1/4 or 1/8 scale: far less work for a 120 px result.
                image.draft("RGB", PREVIEW_SIZE if recipe == PREVIEW else SIZE)
            # An animated image opens on its first frame; load() decodes only that one.
            image.load()
            upright = ImageOps.exif_transpose(image)
            try:
                return _fit(upright, PREVIEW_SIZE if recipe == PREVIEW else SIZE, crop=recipe != PREVIEW)
            finally:
                upright.close()
    except Image.DecompressionBombError as error:
        log.info("no thumbnail: %s", error)
        return None
    except Image.DecompressionBombWarning as error:
        # Raised rather than warned only when warnings are errors (as in the tests); same answer.
        log.info("no thumbnail: %s", error)
        return None
    except MemoryError:
        log.warning("no thumbnail for %s: out of memory", getattr(handle, "name", "?"))
        return None
    except Exception as error:  # noqa: BLE001 - a hostile file can make any decoder raise anything
        # Pillow reports broken files as OSError, SyntaxError, ValueError, EOFError, struct.error,
        # IndexError ...: each means "not a usable image", which is the placeholder, never a 500.
        log.info("no thumbnail for %s: %s: %s", getattr(handle, "name", "?"), type(error).__name__, error)
        return None


def _fit(image: Image.Image, size: tuple[int, int] = SIZE, crop: bool = True) -> Image.Image:
    """Crop and scale to ``size`` (or, without ``crop``, scale within it, never up) in a mode WebP can hold,
    keeping transparency."""
    has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
    converted = image.convert("RGBA" if has_alpha else "RGB")
    try:
        # A box reduce first (cheap) to about twice the target, then Lanczos for the last step.
        factor = min(converted.width // (size[0] * 2), converted.height // (size[1] * 2))
        if factor >= 2:
            reduced = converted.reduce(factor)
            converted.close()
            converted = reduced
        if crop:
            return ImageOps.fit(converted, size, method=Image.Resampling.LANCZOS)
        if converted.width <= size[0] and converted.height <= size[1]:
            return converted.copy()
        return ImageOps.contain(converted, size, method=Image.Resampling.LANCZOS)
    finally:
        converted.close()


def _write(thumbnail: Image.Image, target: Path) -> Path:
    """Save to a temporary file beside ``target`` and move it into place (atomic; last writer wins)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=".webp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            thumbnail.save(handle, format="WEBP", quality=WEBP_QUALITY, method=4)
        os.chmod(temp_name, 0o644)
        os.replace(temp_name, target)
    except BaseException:
        try:
            os.unlink(temp_name)
        except OSError:
            pass
        raise
    return target


def image_size(path: Path) -> tuple[int, int] | None:
    """The pixel size from an image's header (no decode), or None when it is not a readable image."""
    try:
        with files.open_regular(path) as handle, Image.open(handle) as image:
            return image.size
    except Exception:  # noqa: BLE001 - same reasoning as render(): any failure means "not known"
        return None


def prune(cache_dir: Path, max_age: float | None = None, max_bytes: int | None = None) -> tuple[int, int]:
    """Remove thumbnails unused for ``max_age`` seconds, then the oldest until ``max_bytes`` remain.

    "Used" is the later of the access and modification times. Leftover temporary files older than an
    hour are removed too. Answer (files removed, bytes removed). Safe while thumbnails are being served:
    a removed thumbnail is made again on its next request.
    """
    cache_dir = Path(cache_dir)
    if not cache_dir.is_dir():
        return 0, 0
    now = time.time()
    entries = []
    removed = freed = 0
    for dirpath, _dirnames, filenames in os.walk(cache_dir):
        for name in filenames:
            path = os.path.join(dirpath, name)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            used = max(st.st_atime, st.st_mtime)
            stale_temp = name.startswith(TEMP_PREFIX) and now - st.st_mtime > 3600
            too_old = max_age is not None and now - used > max_age
            if stale_temp or too_old:
                if _unlink(path):
                    removed += 1
                    freed += st.st_size
            elif not name.startswith(TEMP_PREFIX):
                entries.append((used, st.st_size, path))
    if max_bytes is not None:
        total = sum(size for _used, size, _path in entries)
        for _used, size, path in sorted(entries):
            if total <= max_bytes:
                break
            if _unlink(path):
                removed += 1
                freed += size
            total -= size
    return removed, freed


def _unlink(path: str) -> bool:
    try:
        os.unlink(path)
        return True
    except OSError:
        return False
