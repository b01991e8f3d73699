"""The built-in executor against real files: ComfyUI's node semantics and file names, progress, failures."""
from __future__ import annotations

import threading

import pytest
from PIL import Image

from history.executors.base import ExecutorRejected
from history.executors.base import Submission
from history.executors.builtin import RESTART_MESSAGE
from history.executors.builtin import BuiltinExecutor

WAIT = 10  # seconds: an upper bound on a condition, never a sleep


class RecordingReporter:
    """A Reporter that remembers every call and signals when a job ends."""

    def __init__(self):
        self.calls = []
        self.ended = {}
        self._lock = threading.Lock()
        self._events = {}

    def _event(self, prompt_id):
        with self._lock:
            return self._events.setdefault(prompt_id, threading.Event())

    def started(self, prompt_id, at):
        self.calls.append(("started", prompt_id))

    def progress(self, prompt_id, node, value, maximum):
        self.calls.append(("progress", prompt_id, node, value, maximum))

    def completed(self, prompt_id, outputs, at):
        self.calls.append(("completed", prompt_id))
        self.ended[prompt_id] = ("completed", outputs)
        self._event(prompt_id).set()

    def failed(self, prompt_id, error, at, status="error"):
        self.calls.append(("failed", prompt_id, status))
        self.ended[prompt_id] = (status, error)
        self._event(prompt_id).set()

    def wait(self, prompt_id):
        assert self._event(prompt_id).wait(WAIT), f"{prompt_id} did not end"
        return self.ended[prompt_id]


@pytest.fixture
def folders(tmp_path):
    output, input_folder, temp = tmp_path / "output", tmp_path / "input", tmp_path / "temp"
    for folder in (output, input_folder, temp):
        folder.mkdir()
    return output, input_folder, temp


@pytest.fixture
def executor(folders):
    reporter = RecordingReporter()
    output, input_folder, temp = folders
    executor = BuiltinExecutor(reporter, output, input_folder, temp, workers=2)
    executor.start([])
    yield executor
    executor.stop()


def run(executor, graph, prompt_id="job-1"):
    executor.submit(Submission(prompt_id, "test", graph, "out"))
    return executor.reporter.wait(prompt_id)


# The graph of the recorded ComfyUI transcript 01_success.json, and what ComfyUI answered for it.
TRANSCRIPT_GRAPH = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 256, "height": 256, "batch_size": 2, "color": 16746496}},
    "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "studio/test"}},
}
TRANSCRIPT_OUTPUTS = [
    {"filename": "test_00001_.png", "subfolder": "studio", "type": "output"},
    {"filename": "test_00002_.png", "subfolder": "studio", "type": "output"},
]


def test_runs_the_transcript_graph_like_comfyui(executor, folders):
    status, outputs = run(executor, TRANSCRIPT_GRAPH)
    assert status == "completed"
    assert outputs == TRANSCRIPT_OUTPUTS
    for ref in outputs:
        with Image.open(folders[0] / "studio" / ref["filename"]) as image:
            assert image.size == (256, 256)
            assert image.convert("RGB").getpixel((10, 10)) == (0x00, 0x77, 0xFF)  # 0xff8800 inverted


def test_reports_started_then_progress_per_node_then_completed(executor):
    run(executor, TRANSCRIPT_GRAPH)
    kinds = [call[0] for call in executor.reporter.calls]
    assert kinds == ["started", "progress", "progress", "progress", "completed"]
    progress = [call[2:] for call in executor.reporter.calls if call[0] == "progress"]
    assert progress == [("1", 1, 3), ("2", 2, 3), ("3", 3, 3)]


def test_file_counter_continues_like_comfyui(executor):
    run(executor, TRANSCRIPT_GRAPH, "first")
    status, outputs = run(executor, TRANSCRIPT_GRAPH, "second")
    assert [ref["filename"] for ref in outputs] == ["test_00003_.png", "test_00004_.png"]


def test_preview_goes_to_temp_beside_the_saved_output(executor, folders):
    graph = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 32, "batch_size": 1, "color": 65280}},
        "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "studio/pair"}},
    }
    status, outputs = run(executor, graph)
    assert status == "completed"
    kinds = {ref["type"]: ref for ref in outputs}
    assert kinds["output"] == {"filename": "pair_00001_.png", "subfolder": "studio", "type": "output"}
    assert kinds["temp"]["filename"].startswith("ComfyUI_temp_") and kinds["temp"]["subfolder"] == ""
    assert (folders[2] / kinds["temp"]["filename"]).is_file()
    assert not list(folders[0].glob("ComfyUI_temp_*"))


def test_animated_webp_holds_every_frame(executor, folders):
    graph = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 40, "height": 30, "batch_size": 1, "color": 0xFF0000}},
        "2": {"class_type": "EmptyImage", "inputs": {"width": 40, "height": 30, "batch_size": 1, "color": 0x0000FF}},
        "3": {"class_type": "ImageBatch", "inputs": {"image1": ["1", 0], "image2": ["2", 0]}},
        "4": {"class_type": "RepeatImageBatch", "inputs": {"image": ["3", 0], "amount": 2}},
        "5": {"class_type": "SaveAnimatedWEBP", "inputs": {"images": ["4", 0], "filename_prefix": "clip/video", "fps": 4.0,
                                                           "lossless": True, "quality": 80, "method": "default"}},
    }
    status, outputs = run(executor, graph)
    assert outputs == [{"filename": "video_00001_.webp", "subfolder": "clip", "type": "output", "animated": True}]
    with Image.open(folders[0] / "clip" / "video_00001_.webp") as video:
        assert video.n_frames == 4
        colours = []
        for frame in range(video.n_frames):
            video.seek(frame)
            colours.append(video.convert("RGB").getpixel((5, 5)))
        assert colours == [(255, 0, 0), (0, 0, 255), (255, 0, 0), (0, 0, 255)]


def test_load_scale_blend_and_blur(executor, folders):
    Image.new("RGB", (200, 100), (200, 100, 50)).save(folders[1] / "wide.png")
    graph = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "wide.png"}},
        "2": {"class_type": "ImageScale", "inputs": {"image": ["1", 0], "upscale_method": "bilinear", "width": 50, "height": 50, "crop": "center"}},
        "3": {"class_type": "ImageInvert", "inputs": {"image": ["2", 0]}},
        "4": {"class_type": "ImageBlend", "inputs": {"image1": ["2", 0], "image2": ["3", 0], "blend_factor": 0.5, "blend_mode": "normal"}},
        "5": {"class_type": "ImageBlur", "inputs": {"image": ["2", 0], "blur_radius": 5, "sigma": 1.0}},
        "6": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "blend"}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": "blur"}},
    }
    status, outputs = run(executor, graph)
    assert status == "completed"
    with Image.open(folders[0] / "blend_00001_.png") as blended:
        assert blended.size == (50, 50)
        assert all(abs(a - b) <= 1 for a, b in zip(blended.getpixel((25, 25)), (128, 128, 128)))
    with Image.open(folders[0] / "blur_00001_.png") as blurred:
        # ComfyUI's blur pads with black: the edge darkens, the centre keeps its colour.
        assert blurred.getpixel((0, 0))[0] < 150
        assert blurred.getpixel((25, 25)) == (200, 100, 50)


def test_unknown_node_fails_and_names_comfyui(executor):
    graph = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
        "2": {"class_type": "KSampler", "inputs": {"latent_image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "x"}},
    }
    status, error = run(executor, graph)
    assert status == "error"
    assert error == (
        "node KSampler (#2): KSampler is not a built-in node; "
        "set STUDIO_COMFYUI_URL to run this workflow on a ComfyUI server"
    )


def test_missing_input_image_fails_with_the_node(executor):
    graph = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "nope.png"}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}},
    }
    status, error = run(executor, graph)
    assert (status, error) == ("error", "node LoadImage (#1): Invalid image file: nope.png")


@pytest.mark.parametrize("bad_input", [{"width": 0}, {"batch_size": "two"}, {"color": 0x1000000}])
def test_invalid_node_input_fails_the_job(executor, bad_input):
    inputs = {"width": 8, "height": 8, "batch_size": 1, "color": 0, **bad_input}
    graph = {
        "1": {"class_type": "EmptyImage", "inputs": inputs},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}},
    }
    status, error = run(executor, graph)
    assert status == "error"
    assert error.startswith("node EmptyImage (#1): ") and next(iter(bad_input)) in error


def test_a_prefix_leading_out_of_the_output_folder_fails_and_writes_nothing(executor, folders):
    graph = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "../../escaped/x"}},
    }
    status, error = run(executor, graph)
    assert status == "error" and error.startswith("node SaveImage (#2):")
    assert not list(folders[0].parent.parent.glob("escaped*"))


@pytest.mark.parametrize("graph", [
    {},
    {"1": {"class_type": "EmptyImage", "inputs": {}}},  # no output node
    {"1": {"class_type": "SaveImage", "inputs": {"images": ["9", 0], "filename_prefix": "x"}}},  # missing link
])
def test_malformed_graphs_are_refused_at_submit(executor, graph):
    with pytest.raises(ExecutorRejected):
        executor.submit(Submission("bad", "test", graph, "out"))


def test_jobs_left_by_a_previous_process_stall_at_start(folders):
    reporter = RecordingReporter()
    executor = BuiltinExecutor(reporter, *folders)
    executor.start(["old-1", "old-2"])
    try:
        assert reporter.ended == {"old-1": ("stalled", RESTART_MESSAGE), "old-2": ("stalled", RESTART_MESSAGE)}
    finally:
        executor.stop()


def test_a_forgotten_job_reports_nothing_more(folders):
    reporter = RecordingReporter()
    executor = BuiltinExecutor(reporter, *folders)
    executor.forget("gone")
    executor.submit(Submission("gone", "test", TRANSCRIPT_GRAPH, "out"))
    executor.start([])
    executor.submit(Submission("kept", "test", TRANSCRIPT_GRAPH, "out"))
    try:
        reporter.wait("kept")
        assert "gone" not in reporter.ended
        assert not [call for call in reporter.calls if call[1] == "gone"]
    finally:
        executor.stop()


def test_stop_ends_the_workers(folders):
    executor = BuiltinExecutor(RecordingReporter(), *folders, workers=3)
    executor.start([])
    threads = list(executor._threads)
    executor.stop()
    assert threads and not any(thread.is_alive() for thread in threads)
