"""The built-in executor: runs ComfyUI API-format graphs of core image nodes with Pillow, in worker threads.

It is the default when no ComfyUI server is configured, so that the studio works (and its example
workflows run) on a machine without one. Supported nodes, with ComfyUI's inputs and semantics
(comfyanonymous/ComfyUI nodes.py, comfy_extras/nodes_images.py and nodes_post_processing.py):

  EmptyImage, LoadImage, ImageInvert, ImageBlur, ImageScale, ImageScaleBy, ImageBlend, ImageBatch,
  RepeatImageBatch, ImageFromBatch, SaveImage, PreviewImage, SaveAnimatedWEBP, SaveAnimatedPNG

An IMAGE is a batch: a list of RGB Pillow images. Files are named as ComfyUI names them
(``<prefix>_00001_.png``). ImageBlur approximates ComfyUI's (2r+1)-tap kernel, zero-padded at the
edges, with Pillow's Gaussian blur. Any other node fails the job with a message that says a ComfyUI
server is needed. No Flask, no database: results go to the Reporter.
"""
from __future__ import annotations

import json
import logging
import queue
import re
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from PIL import ImageChops
from PIL import ImageFilter
from PIL import ImageOps
from PIL import ImageSequence
from PIL.PngImagePlugin import PngInfo

from history import files
from history.executors.base import Executor
from history.executors.base import ExecutorRejected
from history.executors.base import Reporter
from history.executors.base import Submission
from history.executors.base import utcnow

log = logging.getLogger(__name__)

MAX_RESOLUTION = 16384  # ComfyUI's nodes.MAX_RESOLUTION
MAX_BATCH_PIXELS = 48_000_000  # one node's whole batch (about 150 MB as RGB); keeps a worker from exhausting memory
RESTART_MESSAGE = "the studio restarted while this job ran"
OUTPUT_NODES = ("SaveImage", "PreviewImage", "SaveAnimatedWEBP", "SaveAnimatedPNG")
RESAMPLING = {
    "nearest-exact": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "area": Image.Resampling.BOX,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}
WEBP_METHODS = {"default": 4, "fastest": 0, "slowest": 6}


class NodeError(Exception):
    """A node could not run; the message is ComfyUI-like and shown to the user."""


class Cancelled(Exception):
    """The job was forgotten (stalled) or the executor is stopping."""


@dataclass
class NodeContext:
    """What a node may touch: the output, temp and input folders, and the graph (for PNG metadata)."""

    output_root: Path
    input_root: Path
    temp_root: Path
    graph: dict


# ---- helpers ------------------------------------------------------------------------------------

def _int(value, name: str, minimum: int | None = None, maximum: int | None = None) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise NodeError(f"{name} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise NodeError(f"{name} {value} is smaller than min of {minimum}")
    if maximum is not None and value > maximum:
        raise NodeError(f"{name} {value} is bigger than max of {maximum}")
    return value


def _float(value, name: str, minimum: float | None = None, maximum: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise NodeError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if minimum is not None and value < minimum:
        raise NodeError(f"{name} {value} is smaller than min of {minimum}")
    if maximum is not None and value > maximum:
        raise NodeError(f"{name} {value} is bigger than max of {maximum}")
    return value


def _choice(value, name: str, options) -> str:
    if value not in options:
        raise NodeError(f"{name} {value!r} is not one of {', '.join(options)}")
    return value


def _images(value, name: str = "image") -> list[Image.Image]:
    if not isinstance(value, list) or not value or not all(isinstance(item, Image.Image) for item in value):
        raise NodeError(f"{name} must be an IMAGE")
    return value


def _check_batch(images: list[Image.Image]) -> list[Image.Image]:
    total = sum(image.width * image.height for image in images)
    if total > MAX_BATCH_PIXELS:
        raise NodeError(f"a batch of {total:,} pixels is more than the built-in executor's {MAX_BATCH_PIXELS:,}")
    return images


def _fit(image: Image.Image, width: int, height: int, method: str, crop: str) -> Image.Image:
    """Resize like comfy.utils.common_upscale: optionally centre-crop to the target's aspect ratio first."""
    if crop == "center":
        old_width, old_height = image.size
        old_aspect = old_width / old_height
        new_aspect = width / height
        x = y = 0
        if old_aspect > new_aspect:
            x = round((old_width - old_width * (new_aspect / old_aspect)) / 2)
        elif old_aspect < new_aspect:
            y = round((old_height - old_height * (old_aspect / new_aspect)) / 2)
        image = image.crop((x, y, old_width - x, old_height - y))
    return image.resize((width, height), RESAMPLING[method])


def _save_target(filename_prefix, root: Path) -> tuple[Path, str, str, int]:
    """Resolve a filename_prefix like folder_paths.get_save_image_path: (folder, subfolder, name, counter)."""
    if not isinstance(filename_prefix, str) or not filename_prefix.strip():
        raise NodeError("filename_prefix must be a non-empty string")
    prefix = filename_prefix.replace("\\", "/")
    subfolder, _, name = prefix.rpartition("/")
    if not name or name in (".", ".."):
        raise NodeError(f"filename_prefix {filename_prefix!r} has no file name")
    try:
        folder = files.safe_join(root, subfolder, what="filename_prefix") if subfolder else Path(root).resolve()
    except files.UnsafePath as error:
        raise NodeError(f"Saving image outside the output folder is not allowed: {error}") from None
    folder.mkdir(parents=True, exist_ok=True)
    pattern = re.compile(re.escape(name) + r"_(\d+)_")
    counters = [int(match.group(1)) for entry in folder.iterdir() if (match := pattern.match(entry.name))]
    subfolder = "/".join(piece for piece in subfolder.split("/") if piece not in ("", "."))
    return folder, subfolder, name, max(counters, default=0) + 1


def _write_new(folder: Path, name: str, counter: int, extension: str, save) -> tuple[str, int]:
    """Write ``name_<counter>_.extension`` with ``save(handle)``, at the first counter not taken yet,
    never over an existing file (two workers may share a prefix); answer (filename, counter used)."""
    while True:
        filename = f"{name}_{counter:05}_.{extension}"
        try:
            with open(folder / filename, "xb") as handle:
                save(handle)
            return filename, counter
        except FileExistsError:
            counter += 1


def _save_pngs(context: NodeContext, images, filename_prefix, root: Path, kind: str) -> list[dict]:
    folder, subfolder, name, counter = _save_target(filename_prefix, root)
    metadata = PngInfo()
    metadata.add_text("prompt", json.dumps(context.graph))
    refs = []
    for image in _images(images, "images"):
        filename, counter = _write_new(
            folder, name, counter, "png",
            lambda handle, image=image: image.save(handle, format="PNG", pnginfo=metadata, compress_level=4),
        )
        refs.append({"filename": filename, "subfolder": subfolder, "type": kind})
        counter += 1
    return refs


# ---- nodes --------------------------------------------------------------------------------------
# Each node takes its inputs as keyword arguments and returns (outputs tuple, ui refs).

def empty_image(context, width=512, height=512, batch_size=1, color=0):
    """EmptyImage: a batch of one solid colour (0xRRGGBB)."""
    width = _int(width, "width", 1, MAX_RESOLUTION)
    height = _int(height, "height", 1, MAX_RESOLUTION)
    batch_size = _int(batch_size, "batch_size", 1, 4096)
    color = _int(color, "color", 0, 0xFFFFFF)
    if width * height * batch_size > MAX_BATCH_PIXELS:
        raise NodeError(f"a batch of {width * height * batch_size:,} pixels is more than the built-in executor's {MAX_BATCH_PIXELS:,}")
    rgb = ((color >> 16) & 0xFF, (color >> 8) & 0xFF, color & 0xFF)
    frame = Image.new("RGB", (width, height), rgb)
    return ([frame.copy() for _ in range(batch_size)],), []


def load_image(context, image=None, upload=None):
    """LoadImage: a file of the input folder, every frame of the same size, EXIF-rotated, as RGB."""
    if not isinstance(image, str) or not image:
        raise NodeError("image must be a file name in the input folder")
    try:
        path = files.input_file(context.input_root, image)
    except files.UnsafePath:
        raise NodeError(f"Invalid image file: {image}") from None
    if files.regular_file(path) is None:
        raise NodeError(f"Invalid image file: {image}")
    frames = []
    try:
        with files.open_regular(path) as handle, Image.open(handle) as source:
            for frame in ImageSequence.Iterator(source):
                frame = ImageOps.exif_transpose(frame).convert("RGB")
                if frames and frame.size != frames[0].size:
                    continue
                frames.append(frame)
    except (OSError, Image.DecompressionBombError) as error:
        raise NodeError(f"cannot read {image}: {error}") from None
    mask = Image.new("L", (64, 64), 0)
    return (_check_batch(frames), mask), []


def image_invert(context, image=None):
    """ImageInvert: 1 - image."""
    return ([ImageOps.invert(frame) for frame in _images(image)],), []


def image_blur(context, image=None, blur_radius=1, sigma=1.0):
    """ImageBlur: a Gaussian of sigma*radius pixels, with black beyond the edges (ComfyUI pads with zeros)."""
    frames = _images(image)
    radius = _int(blur_radius, "blur_radius", 0, 31)
    sigma = _float(sigma, "sigma", 0.1, 10.0)
    if radius == 0:
        return (frames,), []
    blurred = []
    for frame in frames:
        padded = Image.new("RGB", (frame.width + 2 * radius, frame.height + 2 * radius), (0, 0, 0))
        padded.paste(frame, (radius, radius))
        # ComfyUI's kernel spans [-1, 1] over 2r+1 taps, so its sigma in pixels is sigma*r, cut off at r.
        padded = padded.filter(ImageFilter.GaussianBlur(min(sigma * radius, radius / 1.5)))
        blurred.append(padded.crop((radius, radius, radius + frame.width, radius + frame.height)))
    return (blurred,), []


def image_scale(context, image=None, upscale_method="nearest-exact", width=512, height=512, crop="disabled"):
    """ImageScale: resize to width x height (0 keeps the aspect ratio), optionally centre-cropping."""
    frames = _images(image)
    method = _choice(upscale_method, "upscale_method", RESAMPLING)
    crop = _choice(crop, "crop", ("disabled", "center"))
    width = _int(width, "width", 0, MAX_RESOLUTION)
    height = _int(height, "height", 0, MAX_RESOLUTION)
    if width == 0 and height == 0:
        return (frames,), []
    source_width, source_height = frames[0].size
    if width == 0:
        width = max(1, round(source_width * height / source_height))
    elif height == 0:
        height = max(1, round(source_height * width / source_width))
    if width * height * len(frames) > MAX_BATCH_PIXELS:
        raise NodeError("the scaled batch is too large for the built-in executor")
    return ([_fit(frame, width, height, method, crop) for frame in frames],), []


def image_scale_by(context, image=None, upscale_method="nearest-exact", scale_by=1.0):
    """ImageScaleBy: resize by a factor."""
    frames = _images(image)
    method = _choice(upscale_method, "upscale_method", RESAMPLING)
    scale = _float(scale_by, "scale_by", 0.01, 8.0)
    width = max(1, round(frames[0].width * scale))
    height = max(1, round(frames[0].height * scale))
    if width * height * len(frames) > MAX_BATCH_PIXELS:
        raise NodeError("the scaled batch is too large for the built-in executor")
    return ([frame.resize((width, height), RESAMPLING[method]) for frame in frames],), []


def _pair(first: list, second: list, what: str) -> list[tuple]:
    if len(first) == len(second):
        return list(zip(first, second))
    if len(second) == 1:
        return [(frame, second[0]) for frame in first]
    if len(first) == 1:
        return [(first[0], frame) for frame in second]
    raise NodeError(f"{what}: batches of {len(first)} and {len(second)} images cannot be combined")


def image_blend(context, image1=None, image2=None, blend_factor=0.5, blend_mode="normal"):
    """ImageBlend: image1*(1-f) + mode(image1, image2)*f, image2 resized (bicubic, centre crop) to image1."""
    first = _images(image1, "image1")
    second = _images(image2, "image2")
    factor = _float(blend_factor, "blend_factor", 0.0, 1.0)
    mode = _choice(blend_mode, "blend_mode", ("normal", "multiply", "screen", "overlay", "soft_light"))
    blended = []
    for base, layer in _pair(first, second, "ImageBlend"):
        if layer.size != base.size:
            layer = _fit(layer, base.width, base.height, "bicubic", "center")
        if mode == "normal":
            mixed = layer
        elif mode == "multiply":
            mixed = ImageChops.multiply(base, layer)
        elif mode == "screen":
            mixed = ImageChops.screen(base, layer)
        elif mode == "overlay":
            mixed = ImageChops.overlay(base, layer)
        else:
            mixed = ImageChops.soft_light(base, layer)
        blended.append(Image.blend(base, mixed, factor))
    return (blended,), []


def image_batch(context, image1=None, image2=None):
    """ImageBatch: image1's frames then image2's (resized bilinear, centre crop, to image1's size)."""
    first = _images(image1, "image1")
    second = _images(image2, "image2")
    size = first[0].size
    second = [frame if frame.size == size else _fit(frame, size[0], size[1], "bilinear", "center") for frame in second]
    return (_check_batch(first + second),), []


def repeat_image_batch(context, image=None, amount=1):
    """RepeatImageBatch: the batch repeated ``amount`` times."""
    frames = _images(image)
    amount = _int(amount, "amount", 1, 4096)
    return (_check_batch(frames * amount),), []


def image_from_batch(context, image=None, batch_index=0, length=1):
    """ImageFromBatch: ``length`` frames from ``batch_index``."""
    frames = _images(image)
    index = min(len(frames) - 1, _int(batch_index, "batch_index", 0, 4095))
    length = min(len(frames) - index, _int(length, "length", 1, 4096))
    return (frames[index:index + length],), []


def save_image(context, images=None, filename_prefix="ComfyUI"):
    """SaveImage: one PNG per frame under the output folder, type output."""
    return (), _save_pngs(context, images, filename_prefix, context.output_root, "output")


def preview_image(context, images=None):
    """PreviewImage: one PNG per frame in the temp folder, type temp (ComfyUI's temp/ beside output/)."""
    suffix = "".join(secrets.choice("abcdefghijklmnopqrstupvxyz") for _ in range(5))
    return (), _save_pngs(context, images, f"ComfyUI_temp_{suffix}", context.temp_root, "temp")


def save_animated_webp(context, images=None, filename_prefix="ComfyUI", fps=6.0, lossless=True, quality=80, method="default"):
    """SaveAnimatedWEBP: every frame in one animated WebP; the reference is marked animated."""
    frames = _images(images, "images")
    fps = _float(fps, "fps", 0.01, 1000.0)
    quality = _int(quality, "quality", 0, 100)
    method = _choice(method, "method", WEBP_METHODS)
    if not isinstance(lossless, bool):
        raise NodeError("lossless must be true or false")
    folder, subfolder, name, counter = _save_target(filename_prefix, context.output_root)
    filename, _ = _write_new(folder, name, counter, "webp", lambda handle: frames[0].save(
        handle, format="WEBP", save_all=True, append_images=frames[1:],
        duration=round(1000.0 / fps), lossless=lossless, quality=quality, method=WEBP_METHODS[method],
    ))
    return (), [{"filename": filename, "subfolder": subfolder, "type": "output", "animated": len(frames) > 1}]


def save_animated_png(context, images=None, filename_prefix="ComfyUI", fps=6.0, compress_level=4):
    """SaveAnimatedPNG: every frame in one APNG; the reference is marked animated."""
    frames = _images(images, "images")
    fps = _float(fps, "fps", 0.01, 1000.0)
    level = _int(compress_level, "compress_level", 0, 9)
    folder, subfolder, name, counter = _save_target(filename_prefix, context.output_root)
    filename, _ = _write_new(folder, name, counter, "png", lambda handle: frames[0].save(
        handle, format="PNG", save_all=True, append_images=frames[1:], duration=round(1000.0 / fps), compress_level=level,
    ))
    return (), [{"filename": filename, "subfolder": subfolder, "type": "output", "animated": len(frames) > 1}]


NODES = {
    "EmptyImage": empty_image,
    "LoadImage": load_image,
    "ImageInvert": image_invert,
    "ImageBlur": image_blur,
    "ImageScale": image_scale,
    "ImageScaleBy": image_scale_by,
    "ImageBlend": image_blend,
    "ImageBatch": image_batch,
    "RepeatImageBatch": repeat_image_batch,
    "ImageFromBatch": image_from_batch,
    "SaveImage": save_image,
    "PreviewImage": preview_image,
    "SaveAnimatedWEBP": save_animated_webp,
    "SaveAnimatedPNG": save_animated_png,
}


# ---- graphs -------------------------------------------------------------------------------------

def _is_link(value) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)


def plan(graph: dict) -> list[str]:
    """The node ids to run, dependencies first, for every output node; raise ExecutorRejected when the
    graph is malformed (ComfyUI's validation answers 400 for the same faults)."""
    if not isinstance(graph, dict) or not graph:
        raise ExecutorRejected("the graph is empty", {})
    node_errors = {}
    for node_id, node in graph.items():
        if not isinstance(node, dict) or not isinstance(node.get("class_type"), str) or not isinstance(node.get("inputs", {}), dict):
            node_errors[node_id] = {"errors": [{"type": "invalid_node", "message": "a node needs a class_type and inputs"}]}
            continue
        for name, value in node.get("inputs", {}).items():
            if _is_link(value) and value[0] not in graph:
                node_errors[node_id] = {"errors": [{"type": "bad_linked_input", "message": f"input {name} links to missing node {value[0]}"}]}
    if node_errors:
        raise ExecutorRejected("the graph has invalid nodes", node_errors)
    outputs = [node_id for node_id, node in graph.items() if node["class_type"] in OUTPUT_NODES]
    if not outputs:
        raise ExecutorRejected("Prompt has no outputs", {})
    order: list[str] = []
    state: dict[str, str] = {}

    def visit(node_id: str) -> None:
        if state.get(node_id) == "done":
            return
        if state.get(node_id) == "visiting":
            raise ExecutorRejected(f"the graph has a cycle through node {node_id}", {node_id: {"errors": [{"type": "cycle", "message": "cycle"}]}})
        state[node_id] = "visiting"
        for value in graph[node_id].get("inputs", {}).values():
            if _is_link(value):
                visit(value[0])
        state[node_id] = "done"
        order.append(node_id)

    for node_id in outputs:
        visit(node_id)
    return order


def run_graph(graph: dict, context: NodeContext, on_progress=None, should_stop=None) -> list[dict]:
    """Run a graph in dependency order; return the output references in node order. Raise NodeError
    with "node <class_type> (#id): message", or Cancelled."""
    order = plan(graph)
    for node_id in order:
        class_type = graph[node_id]["class_type"]
        if class_type not in NODES:
            raise NodeError(
                f"node {class_type} (#{node_id}): {class_type} is not a built-in node; "
                "set STUDIO_COMFYUI_URL to run this workflow on a ComfyUI server"
            )
    results: dict[str, tuple] = {}
    refs: list[dict] = []
    # How many later nodes still read each node's outputs: a batch is dropped once nothing needs it.
    readers: dict[str, int] = {}
    for node_id in order:
        for value in graph[node_id].get("inputs", {}).values():
            if _is_link(value):
                readers[value[0]] = readers.get(value[0], 0) + 1
    for index, node_id in enumerate(order, start=1):
        if should_stop is not None and should_stop():
            raise Cancelled()
        node = graph[node_id]
        class_type = node["class_type"]
        arguments = {}
        for name, value in node.get("inputs", {}).items():
            if _is_link(value):
                produced = results[value[0]]
                if value[1] >= len(produced):
                    raise NodeError(f"node {class_type} (#{node_id}): input {name} asks for output {value[1]} of node #{value[0]}, which has {len(produced)}")
                value = produced[value[1]]
            arguments[name] = value
        try:
            produced, ui = NODES[class_type](context, **arguments)
        except NodeError as error:
            raise NodeError(f"node {class_type} (#{node_id}): {error}") from None
        except TypeError as error:
            raise NodeError(f"node {class_type} (#{node_id}): {error}") from None
        except (OSError, ValueError, MemoryError) as error:
            raise NodeError(f"node {class_type} (#{node_id}): {type(error).__name__}: {error}") from None
        results[node_id] = produced
        refs.extend(ui)
        for value in node.get("inputs", {}).values():
            if _is_link(value):
                readers[value[0]] -= 1
                if readers[value[0]] == 0:
                    results.pop(value[0], None)
        if on_progress is not None:
            on_progress(node_id, index, len(order))
    return refs


class BuiltinExecutor(Executor):
    """Runs jobs in a small pool of daemon worker threads."""


    def __init__(self, reporter: Reporter, output_root: Path, input_root: Path, temp_root: Path | None = None, workers: int = 2):
        super().__init__(reporter)
        self.output_root = Path(output_root)
        self.input_root = Path(input_root)
        self.temp_root = Path(temp_root) if temp_root is not None else files.temp_folder(self.output_root)
        self.worker_count = max(1, workers)
        self.capacity = self.worker_count
        self._jobs: queue.Queue[Submission | None] = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self._forgotten: set[str] = set()
        self._lock = threading.Lock()

    def start(self, pending: list[str]) -> None:
        """Start the workers; jobs a previous process left queued or running are lost, so they stall."""
        for prompt_id in pending:
            self.reporter.failed(prompt_id, RESTART_MESSAGE, utcnow(), status="stalled")
        if self._threads:
            return
        self._stopping.clear()
        for number in range(self.worker_count):
            thread = threading.Thread(target=self._work, name=f"builtin-executor-{number}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def unstarted(self) -> list[str]:
        """After stop(): the queued jobs no worker thread took (their graphs are in the store; another worker may run them)."""
        left = []
        while True:
            try:
                submission = self._jobs.get_nowait()
            except queue.Empty:
                return left
            if submission is not None and not self._is_forgotten(submission.prompt_id):
                left.append(submission.prompt_id)

    def submit(self, submission: Submission) -> None:
        """Check the graph's shape (400 when malformed) and queue the job."""
        plan(submission.graph)
        self._jobs.put(submission)

    def forget(self, prompt_id: str) -> None:
        """Stop reporting on a job (it stalled); a worker running it stops at its next node."""
        with self._lock:
            self._forgotten.add(prompt_id)

    def stop(self) -> None:
        """Stop the workers promptly; a job mid-run stays as the store has it."""
        self._stopping.set()
        for _ in self._threads:
            self._jobs.put(None)
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads = []

    def _is_forgotten(self, prompt_id: str) -> bool:
        with self._lock:
            return prompt_id in self._forgotten

    def _work(self) -> None:
        while not self._stopping.is_set():
            submission = self._jobs.get()
            if submission is None:
                return
            if self._is_forgotten(submission.prompt_id):
                continue
            try:
                self.run(submission)
            except Exception:  # a worker must survive any one job
                log.exception("built-in executor failed on %s", submission.prompt_id)

    def run(self, submission: Submission) -> None:
        """Run one job and report it."""
        prompt_id = submission.prompt_id
        context = NodeContext(self.output_root, self.input_root, self.temp_root, submission.graph)
        self.reporter.started(prompt_id, utcnow())

        def should_stop() -> bool:
            return self._stopping.is_set() or self._is_forgotten(prompt_id)

        def progress(node_id: str, value: int, maximum: int) -> None:
            if not should_stop():
                self.reporter.progress(prompt_id, node_id, value, maximum)

        try:
            refs = run_graph(submission.graph, context, progress, should_stop)
        except Cancelled:
            return
        except (NodeError, ExecutorRejected) as error:
            if not self._is_forgotten(prompt_id):
                self.reporter.failed(prompt_id, str(error), utcnow())
            return
        except Exception as error:  # a bug in a node: still end the job, with the reason
            log.exception("node crashed in %s", prompt_id)
            if not self._is_forgotten(prompt_id):
                self.reporter.failed(prompt_id, f"{type(error).__name__}: {error}", utcnow())
            return
        if not self._is_forgotten(prompt_id):
            self.reporter.completed(prompt_id, refs, utcnow())
