"""Thumbnails: the Pillow recipe, the on-disk cache, and every file that must give None instead of raising."""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
from PIL import Image
from PIL import JpegImagePlugin

from history import thumbnails
from tests.conftest import png_header


def save(path: Path, image: Image.Image, **options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with image:
        image.save(path, **options)
    return path


def real_png(path: Path, size=(640, 480), color=(255, 136, 0)) -> Path:
    return save(path, Image.new("RGB", size, color))


def truncated(path: Path, suffix: str) -> Path:
    """A real image cut in half."""
    whole = path.with_name("whole" + suffix)
    with Image.effect_noise((400, 400), 64) as noise:
        save(whole, noise.convert("RGB"))
    data = whole.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


BAD_FILES = {
    "missing": lambda path: path,
    "empty": lambda path: (path.write_bytes(b""), path)[1],
    "text named png": lambda path: (path.write_text("<html>not an image</html>"), path)[1],
    "truncated png": lambda path: truncated(path, ".png"),
    "truncated jpeg": lambda path: truncated(path.with_suffix(".jpg"), ".jpg"),
    "garbage after png signature": lambda path: (path.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(256)), path)[1],
    # 100000x100000 is over twice Pillow's limit: Image.open raises DecompressionBombError.
    "bomb 10 gigapixels": lambda path: (path.write_bytes(png_header(100_000, 100_000)), path)[1],
    # 10000x10000 is between Pillow's warning and its error (a warning; an error under filterwarnings).
    "bomb 100 megapixels": lambda path: (path.write_bytes(png_header(10_000, 10_000)), path)[1],
    # 8500x8500 is under Pillow's own limit: only our MAX_PIXELS stops it, before any decode.
    "over our pixel limit": lambda path: (path.write_bytes(png_header(8_500, 8_500)), path)[1],
    "a directory": lambda path: (path.mkdir(), path)[1],
    "zero width": lambda path: (path.write_bytes(png_header(0, 10)), path)[1],
}


@pytest.fixture
def cache_dir(tmp_path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def renders(monkeypatch) -> list:
    """Count the decodes (calls of render) a test causes."""
    calls = []
    original = thumbnails.render

    def counting(handle, *recipe):
        calls.append(handle.name)
        return original(handle, *recipe)

    monkeypatch.setattr(thumbnails, "render", counting)
    return calls


def test_thumbnail_is_a_120px_webp(tmp_path, cache_dir):
    source = real_png(tmp_path / "out" / "final_00001_.png", size=(1024, 768))
    made = thumbnails.make_thumbnail(source, cache_dir)
    assert made is not None and made.is_relative_to(cache_dir)
    with Image.open(made) as thumbnail:
        assert thumbnail.format == "WEBP"
        assert thumbnail.size == (120, 120)
        assert thumbnail.mode == "RGB"
        red, green, blue = thumbnail.getpixel((60, 60))
        assert abs(red - 255) < 12 and abs(green - 136) < 12 and blue < 12
    assert made.stat().st_size < 2_000


@pytest.mark.parametrize("size, shown", [((1024, 614), (720, 432)), ((320, 192), (320, 192)), ((600, 1800), (240, 720))])
def test_the_preview_keeps_the_aspect_and_is_never_enlarged(tmp_path, cache_dir, size, shown):
    source = real_png(tmp_path / "out" / "final_00001_.png", size=size)
    made = thumbnails.make_thumbnail(source, cache_dir, thumbnails.PREVIEW)
    with Image.open(made) as preview:
        assert preview.format == "WEBP" and preview.size == shown
    assert made != thumbnails.make_thumbnail(source, cache_dir)


def test_made_once_then_served_from_cache(tmp_path, cache_dir, renders):
    source = real_png(tmp_path / "a.png")
    first = thumbnails.make_thumbnail(source, cache_dir)
    made_at = first.stat().st_mtime_ns
    second = thumbnails.make_thumbnail(source, cache_dir)
    assert second == first
    assert first.stat().st_mtime_ns == made_at
    assert len(renders) == 1


def test_a_changed_source_gets_a_new_thumbnail(tmp_path, cache_dir, renders):
    source = real_png(tmp_path / "a.png", color=(255, 0, 0))
    first = thumbnails.make_thumbnail(source, cache_dir)
    version = thumbnails.file_version(source)
    real_png(source, color=(0, 0, 255))
    stat = source.stat()
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    second = thumbnails.make_thumbnail(source, cache_dir)
    assert second != first
    assert thumbnails.file_version(source) != version
    assert len(renders) == 2
    with Image.open(second) as thumbnail:
        red, _green, blue = thumbnail.getpixel((60, 60))
        assert blue > 200 and red < 40


def test_cache_key_follows_the_resolved_path(tmp_path, cache_dir, renders):
    source = real_png(tmp_path / "a.png")
    link = tmp_path / "link.png"
    link.symlink_to(source)
    assert thumbnails.make_thumbnail(link, cache_dir) == thumbnails.make_thumbnail(source, cache_dir)
    assert len(renders) == 1


def test_exif_orientation_is_applied(tmp_path, cache_dir):
    # Stored 200x100: red top half, blue bottom half. Orientation 6 says "rotate 90 degrees clockwise to
    # view", so upright it is 100x200 with blue on the left and red on the right.
    stored = Image.new("RGB", (200, 100), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 200, 50))
    exif = Image.Exif()
    exif[0x0112] = 6
    source = save(tmp_path / "photo.jpg", stored, exif=exif, quality=95)
    made = thumbnails.make_thumbnail(source, cache_dir)
    with Image.open(made) as thumbnail:
        left = thumbnail.getpixel((15, 60))
        right = thumbnail.getpixel((105, 60))
    assert left[2] > 200 and left[0] < 60, left
    assert right[0] > 200 and right[2] < 60, right


def test_jpeg_is_decoded_at_a_reduced_scale(tmp_path, cache_dir, monkeypatch):
    with Image.effect_noise((2400, 1600), 40) as noise:
        source = save(tmp_path / "big.jpg", noise.convert("RGB"), quality=85)
    drafts = []
    original = JpegImagePlugin.JpegImageFile.draft

    def recording(self, mode, size):
        result = original(self, mode, size)
        drafts.append((mode, size, self.size))
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", recording)
    made = thumbnails.make_thumbnail(source, cache_dir)
    assert drafts == [("RGB", (120, 120), (300, 200))]  # libjpeg's 1/8 scale, still at least 120x120
    with Image.open(made) as thumbnail:
        assert thumbnail.size == (120, 120)


def test_first_frame_of_an_animation(tmp_path, cache_dir):
    frames = [Image.new("RGB", (64, 64), color) for color in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    source = tmp_path / "anim.gif"
    frames[0].save(source, save_all=True, append_images=frames[1:], duration=100, loop=0)
    for frame in frames:
        frame.close()
    made = thumbnails.make_thumbnail(source, cache_dir)
    with Image.open(made) as thumbnail:
        red, green, blue = thumbnail.convert("RGB").getpixel((60, 60))
        assert red > 200 and green < 40 and blue < 40
        assert getattr(thumbnail, "n_frames", 1) == 1


def test_transparency_is_kept(tmp_path, cache_dir):
    source = save(tmp_path / "alpha.png", Image.new("RGBA", (300, 300), (255, 0, 0, 0)))
    with Image.open(thumbnails.make_thumbnail(source, cache_dir)) as thumbnail:
        assert thumbnail.mode == "RGBA"
        assert thumbnail.getpixel((60, 60))[3] == 0


@pytest.mark.parametrize("kind", ["L", "P", "CMYK", "I;16", "1"])
def test_other_modes_become_rgb(tmp_path, cache_dir, kind):
    suffix = ".jpg" if kind == "CMYK" else ".png"
    source = save(tmp_path / f"mode{suffix}", Image.new(kind, (200, 150)))
    with Image.open(thumbnails.make_thumbnail(source, cache_dir)) as thumbnail:
        assert thumbnail.size == (120, 120)


@pytest.mark.parametrize("case", BAD_FILES, ids=list(BAD_FILES))
def test_files_that_cannot_be_thumbnailed_give_none(tmp_path, cache_dir, case):
    source = BAD_FILES[case](tmp_path / "bad.png")
    assert thumbnails.make_thumbnail(source, cache_dir) is None
    leftovers = [path for path in cache_dir.rglob("*") if path.is_file()] if cache_dir.exists() else []
    assert leftovers == []


def test_a_bad_file_is_not_decoded(tmp_path, cache_dir, monkeypatch):
    source = tmp_path / "huge.png"
    source.write_bytes(png_header(8_500, 8_500))
    monkeypatch.setattr(Image.Image, "load", lambda self: pytest.fail("decoded a file over the pixel limit"))
    assert thumbnails.make_thumbnail(source, cache_dir) is None


def test_an_unwritable_cache_gives_none(tmp_path):
    source = real_png(tmp_path / "a.png")
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache folder should be")
    assert thumbnails.make_thumbnail(source, blocker) is None


def test_concurrent_first_requests_agree(tmp_path, cache_dir):
    source = real_png(tmp_path / "a.png", size=(1500, 1500))
    barrier = threading.Barrier(8)
    results = []
    errors = []

    def request():
        try:
            barrier.wait(timeout=10)
            results.append(thumbnails.make_thumbnail(source, cache_dir))
        except Exception as error:  # noqa: BLE001 - collected and asserted below
            errors.append(error)

    threads = [threading.Thread(target=request) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    assert len(results) == 8 and len(set(results)) == 1 and results[0] is not None
    files = [path for path in cache_dir.rglob("*") if path.is_file()]
    assert files == [results[0]]  # no temporary files left behind
    with Image.open(results[0]) as thumbnail:
        thumbnail.load()
        assert thumbnail.size == (120, 120)


def test_recipe_version_is_part_of_the_key(tmp_path, cache_dir, monkeypatch):
    source = real_png(tmp_path / "a.png")
    first = thumbnails.make_thumbnail(source, cache_dir)
    version = thumbnails.file_version(source)
    monkeypatch.setattr(thumbnails, "RECIPE_VERSION", thumbnails.RECIPE_VERSION + 1)
    assert thumbnails.make_thumbnail(source, cache_dir) != first
    assert thumbnails.file_version(source) != version


@pytest.mark.parametrize("name, expected", [
    ("a.png", True), ("B.JPEG", True), ("c.webp", True), ("d.gif", True),
    ("e.mp4", False), ("f.webm", False), ("g.txt", False), ("png", False),
])
def test_can_thumbnail(name, expected):
    assert thumbnails.can_thumbnail(name) is expected


def test_image_size_reads_the_header(tmp_path):
    assert thumbnails.image_size(real_png(tmp_path / "a.png", size=(321, 123))) == (321, 123)
    assert thumbnails.image_size(tmp_path / "missing.png") is None
    (tmp_path / "t.png").write_text("nope")
    assert thumbnails.image_size(tmp_path / "t.png") is None


def test_prune_by_age_and_by_size(tmp_path, cache_dir):
    made = []
    for index in range(4):
        source = real_png(tmp_path / f"{index}.png", color=(index * 60, 0, 0))
        made.append(thumbnails.make_thumbnail(source, cache_dir))
    now = time.time()
    for age, path in zip((10_000, 5_000, 100, 0), made):
        os.utime(path, (now - age, now - age))
    stale_temp = made[0].parent / (thumbnails.TEMP_PREFIX + "left-over.webp")
    stale_temp.write_bytes(b"x")
    os.utime(stale_temp, (now - 7200, now - 7200))

    removed, freed = thumbnails.prune(cache_dir, max_age=3600)
    assert removed == 3 and freed > 0  # two old thumbnails and the temporary file
    assert [path.exists() for path in made] == [False, False, True, True]

    removed, _freed = thumbnails.prune(cache_dir, max_bytes=made[3].stat().st_size)
    assert removed == 1
    assert [path.exists() for path in made] == [False, False, False, True]
    assert thumbnails.prune(tmp_path / "no-cache-here") == (0, 0)
