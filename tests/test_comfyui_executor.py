"""The ComfyUI executor against a ComfyUI double that speaks real HTTP and a real websocket on loopback.

Every scenario of the transcripts in ../shared/comfyui/: success, cached re-run, preview beside save,
validation errors, a runtime error, interrupt, a connection dropped mid-run, a restart that forgets a
running job, start-up reconcile and a hung run. Assertions are about what a person would see in the
history: the status, the error text, the output files in node order, the start and finish times.
"""
from __future__ import annotations

import datetime
import json
import socket
import threading
import time
import urllib.error
import urllib.request
import uuid

import pytest
import simple_websocket

from tests.comfyui_double import ComfyUIDouble
from tests.comfyui_double import recorded_node_classes
from tests.comfyui_double import recorded_types
from tests.comfyui_double import transcript
from history.executors.base import ExecutorRejected
from history.executors.base import ExecutorUnavailable
from history.executors.base import Submission
from history.executors.comfyui import DIED
from history.executors.comfyui import FORGOTTEN
from history.executors.comfyui import REMOVED
from history.executors.comfyui import history_outcome
from history.executors.comfyui import history_pages
from history.executors.comfyui import ComfyUIExecutor
from history.executors.comfyui import output_refs

OUTPUT_DIR = "20261128_153012_a1b2c3"
SUBFOLDER = f"comfyui-studio/{OUTPUT_DIR}"
WAIT = 5.0


class RecordingReporter:
    """Collects what an executor reports, and shows each job as the history would."""

    def __init__(self):
        self.calls = []
        self.stored = set()
        self._changed = threading.Condition()

    def _record(self, *call) -> None:
        with self._changed:
            self.calls.append(call)
            self._changed.notify_all()

    def started(self, prompt_id, at):
        self._record("started", prompt_id, at)

    def progress(self, prompt_id, node, value, maximum):
        self._record("progress", prompt_id, node, value, maximum)

    def completed(self, prompt_id, outputs, at):
        self._record("completed", prompt_id, outputs, at)

    def failed(self, prompt_id, error, at, status="error", outputs=None):
        self._record("failed", prompt_id, error, at, status, outputs or [])

    # What an observer asks of the store: this reporter's store is the jobs it heard of.
    def observed(self, record, status):
        if record["prompt_id"] in self.known():
            return False
        self._record("observed", record["prompt_id"], record, status)
        return True

    def unknown(self, prompt_ids):
        known = self.known()
        return [prompt_id for prompt_id in prompt_ids if prompt_id not in known]

    def recorded(self, records, announce=True):
        for record in records:
            self._record("recorded", record["prompt_id"], record, announce)
        return len(records), []

    def known(self) -> set:
        with self._changed:
            return {call[1] for call in self.calls} | self.stored

    def submitted(self, prompt_id) -> None:
        """Note a job as the store has it before it is posted."""
        with self._changed:
            self.stored.add(prompt_id)

    def of(self, prompt_id) -> list:
        """The calls about one job."""
        with self._changed:
            return [call for call in self.calls if call[1] == prompt_id]

    def wait_for(self, prompt_id, kind, timeout=WAIT) -> bool:
        """Wait until a call of ``kind`` came for the job."""
        with self._changed:
            return self._changed.wait_for(
                lambda: any(call[0] == kind and call[1] == prompt_id for call in self.calls), timeout
            )

    def job(self, prompt_id, timeout=WAIT) -> dict:
        """Wait for the job to end and answer it as its history record would read."""
        with self._changed:
            ended = self._changed.wait_for(
                lambda: any(call[0] in ("completed", "failed") and call[1] == prompt_id for call in self.calls), timeout
            )
        assert ended, f"job {prompt_id} did not end; calls: {self.of(prompt_id)}"
        record = {"status": "running", "started_at": None, "outputs": [], "error": None}
        for call in self.of(prompt_id):
            if call[0] == "started":
                record["started_at"] = call[2]
            elif call[0] == "completed":
                record.update(status="completed", outputs=call[2], finished_at=call[3])
            elif call[0] == "failed":
                record.update(status=call[4], error=call[2], finished_at=call[3], outputs=call[5])
        if record["started_at"]:
            record["duration"] = (record["finished_at"] - record["started_at"]).total_seconds()
        return record


def wait_until(condition, timeout=WAIT) -> bool:
    """Wait for a condition that no event announces."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def save_graph(name="final", color=0xFF8800, batch=2, title=None, prefix=None) -> dict:
    """The graph of 01_success.json, saving under the job's output folder."""
    graph = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": batch, "color": color}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {
            "class_type": "SaveImage",
            "inputs": {"images": ["2", 0], "filename_prefix": prefix or f"{SUBFOLDER}/{name}"},
        },
    }
    if title:
        graph["3"]["_meta"] = {"title": title}
    return graph


def submission(graph, prompt_id=None) -> Submission:
    return Submission(prompt_id or str(uuid.uuid4()), "txt2img-example", graph, OUTPUT_DIR)


def ms(at: datetime.datetime) -> int:
    return round(at.timestamp() * 1000)


def post_json(url, body) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=WAIT) as response:
        text = response.read()
    return json.loads(text) if text else {}


def get_json(url):
    with urllib.request.urlopen(url, timeout=WAIT) as response:
        return json.loads(response.read())


@pytest.fixture
def comfyui(tmp_path):
    """A ComfyUI double writing into tmp_path/output."""
    (tmp_path / "input").mkdir()
    with ComfyUIDouble(tmp_path / "output", input_dir=tmp_path / "input") as double:
        yield double


@pytest.fixture
def reporter():
    return RecordingReporter()


@pytest.fixture
def make_executor(comfyui):
    """Make started executors on the double, quick to reconnect; all are stopped after the test."""
    made = []

    def make(reporter, pending=(), url=None, connect=True):
        executor = ComfyUIExecutor(reporter, url or comfyui.url, reconnect_delay=0.05, http_timeout=WAIT)
        submit = executor.submit

        def submit_as_the_studio_does(job):
            # The studio stores a job before it posts it: an observer never takes it for another client's.
            reporter.submitted(job.prompt_id)
            submit(job)

        executor.submit = submit_as_the_studio_does
        executor.max_reconnect_delay = 0.2
        executor.orphan_poll_seconds = 0.2
        made.append(executor)
        executor.start(list(pending))
        if connect:
            assert executor.wait_connected(WAIT)
        return executor

    yield make
    for executor in made:
        executor.stop()


@pytest.fixture
def executor(make_executor, reporter):
    return make_executor(reporter)


# -- runs that end well -----------------------------------------------------------------------


def test_success_reports_start_progress_and_saved_files(comfyui, executor, reporter):
    job = submission(save_graph())
    executor.submit(job)

    record = reporter.job(job.prompt_id)
    assert record["status"] == "completed"
    assert record["outputs"] == [
        {"filename": "final_00001_.png", "subfolder": SUBFOLDER, "type": "output"},
        {"filename": "final_00002_.png", "subfolder": SUBFOLDER, "type": "output"},
    ]
    for ref in record["outputs"]:
        assert (comfyui.output_dir / ref["subfolder"] / ref["filename"]).is_file()
    progress = [call[2:] for call in reporter.of(job.prompt_id) if call[0] == "progress"]
    assert progress == [("1", 0, 3), ("2", 1, 3), ("3", 2, 3)]
    # ComfyUI got our prompt id and the executor's client id, and the graph untouched.
    posted = [body for method, path, body in comfyui.requests if (method, path) == ("POST", "/prompt")]
    assert posted == [{"prompt": job.graph, "client_id": executor.client_id, "prompt_id": job.prompt_id}]
    assert executor.following() == []


def test_duration_runs_from_execution_start_not_from_queueing(comfyui, executor, reporter):
    comfyui.hold()
    job = submission(save_graph())
    executor.submit(job)
    assert get_json(comfyui.url + "/queue")["queue_pending"][0][1] == job.prompt_id
    assert reporter.of(job.prompt_id) == []
    released_ms = int(time.time() * 1000)
    comfyui.release()

    record = reporter.job(job.prompt_id)
    messages = dict(comfyui.history(job.prompt_id)["status"]["messages"])
    assert ms(record["started_at"]) == messages["execution_start"]["timestamp"] >= released_ms
    assert ms(record["finished_at"]) == messages["execution_success"]["timestamp"]
    assert record["duration"] == pytest.approx(
        (messages["execution_success"]["timestamp"] - messages["execution_start"]["timestamp"]) / 1000
    )


def test_comfyui_that_mints_its_own_prompt_ids_is_followed_under_ours(comfyui, executor, reporter):
    comfyui.mints_prompt_ids = True
    comfyui.hold()
    job = submission(save_graph())
    executor.submit(job)
    comfyui.release()

    record = reporter.job(job.prompt_id)
    assert record["status"] == "completed"
    assert {call[1] for call in reporter.calls} == {job.prompt_id}


def test_cached_rerun_reports_the_replayed_files(comfyui, executor, reporter):
    first, again = submission(save_graph()), submission(save_graph())
    executor.submit(first)
    assert reporter.job(first.prompt_id)["status"] == "completed"
    executor.submit(again)

    record = reporter.job(again.prompt_id)
    assert record["status"] == "completed"
    assert record["outputs"] == reporter.job(first.prompt_id)["outputs"]
    assert comfyui.frames[again.prompt_id] == [kind for kind in recorded_types("02_cached_rerun.json") if kind != "status"]


def test_preview_beside_save_keeps_the_temp_type_in_node_order(comfyui, executor, reporter):
    graph = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 32, "batch_size": 1, "color": 65280}},
        "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": f"{SUBFOLDER}/pair"}},
    }
    job = submission(graph)
    executor.submit(job)

    record = reporter.job(job.prompt_id)
    assert record["status"] == "completed"
    # ComfyUI runs the save (#3) before the preview (#2); the outputs still come in node order.
    preview, saved = record["outputs"]
    assert preview["type"] == "temp" and preview["subfolder"] == "" and preview["filename"].startswith("ComfyUI_temp_")
    assert saved == {"filename": "pair_00001_.png", "subfolder": SUBFOLDER, "type": "output"}
    assert (comfyui.temp_dir / preview["filename"]).is_file()


def test_animated_output_is_flagged(comfyui, executor, reporter):
    graph = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 32, "batch_size": 3, "color": 255}},
        "2": {
            "class_type": "SaveAnimatedWEBP",
            "inputs": {"images": ["1", 0], "filename_prefix": f"{SUBFOLDER}/clip", "fps": 6.0,
                       "lossless": False, "quality": 80, "method": "default"},
        },
    }
    job = submission(graph)
    executor.submit(job)

    record = reporter.job(job.prompt_id)
    assert record["outputs"] == [{"filename": "clip_00001_.webp", "subfolder": SUBFOLDER, "type": "output", "animated": True}]
    assert (comfyui.output_dir / SUBFOLDER / "clip_00001_.webp").is_file()


def test_output_refs_keep_comfyui_refs_and_mark_videos():
    outputs = {
        "10": [{"gifs": [{"filename": "v_00001.mp4", "subfolder": "s", "type": "output", "format": "video/h264-mp4"}]}],
        "9": [{"images": [{"filename": "a.png", "subfolder": "s", "type": "output"}], "animated": [False]}],
        "9:2": [{"audio": [{"filename": "a.flac", "subfolder": "s", "type": "output"}], "text": ["ignored"]}],
    }
    assert output_refs(outputs) == [
        {"filename": "a.png", "subfolder": "s", "type": "output"},
        {"filename": "a.flac", "subfolder": "s", "type": "output"},
        {"filename": "v_00001.mp4", "subfolder": "s", "type": "output", "animated": True},
    ]


# -- runs that do not ---------------------------------------------------------------------------


def invalid(graph_change) -> dict:
    graph = save_graph()
    graph_change(graph)
    return graph


@pytest.mark.parametrize(
    ("graph", "message"),
    [
        (invalid(lambda g: g["1"]["inputs"].update(width="abc")),
         "node EmptyImage (#1): Failed to convert an input value to a INT value: width, abc, "
         "invalid literal for int() with base 10: 'abc'"),
        (invalid(lambda g: g["1"]["inputs"].update(width=0)), "node EmptyImage (#1): Value 0 smaller than min of 1: width"),
        (invalid(lambda g: g["1"]["inputs"].pop("height")), "node EmptyImage (#1): Required input is missing: height"),
        (invalid(lambda g: g["1"].update(_meta={"title": "Canvas"}) or g["1"]["inputs"].pop("height")),
         "node Canvas (#1): Required input is missing: height"),
        (invalid(lambda g: g["2"].update(class_type="NoSuchNodeClass")),
         "Cannot execute because node NoSuchNodeClass does not exist. (Node ID '#2')"),
        (invalid(lambda g: g.pop("3")), "Prompt has no outputs"),
    ],
    ids=["wrong-type", "below-min", "missing-input", "titled-node", "unknown-class", "no-outputs"],
)
def test_validation_error_is_rejected_with_the_node_errors(comfyui, executor, reporter, graph, message):
    job = submission(graph)
    with pytest.raises(ExecutorRejected) as raised:
        executor.submit(job)

    assert str(raised.value) == f"ComfyUI rejected the workflow: {message}"
    assert set(raised.value.details) == {"error", "node_errors"}
    assert executor.following() == []
    assert reporter.calls == []
    assert get_json(comfyui.url + "/queue") == {"queue_running": [], "queue_pending": []}


def test_runtime_error_names_the_node_and_the_exception(comfyui, executor, reporter):
    job = submission(save_graph(prefix="../escape_outside", title="Save final"))
    executor.submit(job)

    record = reporter.job(job.prompt_id)
    assert record["status"] == "error"
    assert record["error"].startswith(
        "node Save final (#3): Exception: **** ERROR: Saving image outside the output folder is not allowed."
    )
    assert record["outputs"] == []
    assert record["started_at"] is not None


def test_failing_node_without_title_is_named_by_its_class(comfyui, executor, reporter):
    comfyui.fail_at("2", "RuntimeError", "CUDA out of memory\n")
    job = submission(save_graph())
    executor.submit(job)

    assert reporter.job(job.prompt_id)["error"] == "node ImageInvert (#2): RuntimeError: CUDA out of memory"


def test_interrupt_is_an_error_never_completed(comfyui, executor, reporter):
    comfyui.pause_before("2")
    job = submission(save_graph())
    executor.submit(job)
    assert comfyui.wait_paused(WAIT)
    executor.cancel(job.prompt_id)

    record = reporter.job(job.prompt_id)
    assert (record["status"], record["error"]) == ("error", "interrupted")
    assert [call[0] for call in reporter.of(job.prompt_id) if call[0] in ("completed", "failed")] == ["failed"]


def test_unreachable_comfyui_makes_submit_unavailable(reporter):
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    executor = ComfyUIExecutor(reporter, f"http://127.0.0.1:{port}", reconnect_delay=0.05, http_timeout=WAIT)
    executor.start([])
    try:
        with pytest.raises(ExecutorUnavailable) as raised:
            executor.submit(submission(save_graph()))
        assert str(raised.value) == f"ComfyUI at http://127.0.0.1:{port} is unreachable: Connection refused"
        assert executor.following() == []
    finally:
        began = time.monotonic()
        executor.stop()
    assert time.monotonic() - began < 2


# -- lost connections, restarts, hangs --------------------------------------------------------


@pytest.mark.parametrize("outcome", ["completed", "interrupted"])
def test_run_that_ends_while_the_socket_is_down_gets_its_real_outcome(comfyui, executor, reporter, outcome):
    comfyui.pause_before("2")
    job = submission(save_graph())
    executor.submit(job)
    assert comfyui.wait_paused(WAIT)
    assert reporter.wait_for(job.prompt_id, "started")

    comfyui.drop_connections(refuse=True)
    if outcome == "interrupted":
        post_json(comfyui.url + "/interrupt", {})
    else:
        comfyui.resume()
    assert comfyui.wait_idle(WAIT)
    assert reporter.of(job.prompt_id)[-1][0] == "progress"  # nothing reached the executor meanwhile
    comfyui.accept_connections()

    record = reporter.job(job.prompt_id)
    history = comfyui.history(job.prompt_id)
    messages = dict(history["status"]["messages"])
    if outcome == "completed":
        assert record["status"] == "completed"
        assert record["outputs"] == history["outputs"]["3"]["images"]
        assert ms(record["finished_at"]) == messages["execution_success"]["timestamp"]
    else:
        assert (record["status"], record["error"]) == ("error", "interrupted")
    assert ms(record["started_at"]) == messages["execution_start"]["timestamp"]
    assert [call[0] for call in reporter.of(job.prompt_id)].count("started") == 1


def test_restart_that_forgot_a_running_job_makes_it_stalled(comfyui, executor, reporter):
    comfyui.pause_before("2")
    job = submission(save_graph())
    executor.submit(job)
    assert comfyui.wait_paused(WAIT)

    went_down = datetime.datetime.now(datetime.timezone.utc)
    comfyui.restart(down=True)  # 12_restart_mid_job: the socket ends, connects are refused while it starts
    assert wait_until(lambda: comfyui.refused_sockets >= 3)
    back_up = datetime.datetime.now(datetime.timezone.utc)
    comfyui.accept_connections()

    record = reporter.job(job.prompt_id)
    assert (record["status"], record["error"]) == ("stalled", DIED)
    # It ends when it was last known alive, so its duration never counts the outage.
    assert went_down <= record["finished_at"] < back_up
    assert [call[0] for call in reporter.of(job.prompt_id)].count("started") == 1


def test_start_up_reconciles_what_the_store_has_as_queued_or_running(comfyui, make_executor):
    earlier = RecordingReporter()
    previous = make_executor(earlier)
    finished, running = submission(save_graph("done")), submission(save_graph("late", color=0x123456))
    previous.submit(finished)
    assert earlier.job(finished.prompt_id)["status"] == "completed"
    comfyui.pause_before("2")
    previous.submit(running)
    assert comfyui.wait_paused(WAIT)
    previous.stop()

    reporter = RecordingReporter()
    forgotten = str(uuid.uuid4())
    make_executor(reporter, pending=[finished.prompt_id, running.prompt_id, forgotten])

    assert reporter.job(finished.prompt_id)["outputs"] == earlier.job(finished.prompt_id)["outputs"]
    assert reporter.job(forgotten)["status"] == "stalled"
    assert reporter.of(running.prompt_id) == []  # still running in ComfyUI
    # Its frames go to the earlier process's client id; the new one finds the end in /history.
    comfyui.resume()
    record = reporter.job(running.prompt_id)
    assert record["status"] == "completed"
    assert record["outputs"][0]["filename"] == "late_00001_.png"
    messages = dict(comfyui.history(running.prompt_id)["status"]["messages"])
    assert ms(record["started_at"]) == messages["execution_start"]["timestamp"]


def test_hung_run_waits_for_the_stall_watcher_and_forget_silences_it(comfyui, executor, reporter):
    comfyui.pause_before("2")
    hung = submission(save_graph())
    executor.submit(hung)
    assert comfyui.wait_paused(WAIT)
    assert reporter.wait_for(hung.prompt_id, "started")
    assert hung.prompt_id in executor.following()

    executor.forget(hung.prompt_id)
    calls_before = len(reporter.of(hung.prompt_id))
    comfyui.resume()
    after = submission(save_graph("after"))
    executor.submit(after)
    # Frames come in order on the one socket: once the next job ended, the hung one's were handled.
    assert reporter.job(after.prompt_id)["status"] == "completed"
    assert len(reporter.of(hung.prompt_id)) == calls_before
    assert executor.following() == []


def test_stop_is_prompt_while_a_run_hangs(comfyui, executor, reporter):
    comfyui.pause_before("2")
    executor.submit(submission(save_graph()))
    assert comfyui.wait_paused(WAIT)

    began = time.monotonic()
    executor.stop()
    assert time.monotonic() - began < 2
    assert not executor.connected


def test_junk_frames_do_not_stop_the_socket(comfyui, executor, reporter):
    for junk in [
        "not json", "[1, 2]", '{"type": "executing"}', '{"type": "execution_success", "data": {"prompt_id": 5}}',
        '{"type": "executing", "data": {"node": "7"}}', '{"type": "progress", "data": {"prompt_id": "x", "value": "?"}}',
        b"\x00\x00\x00\x01\x00\x00\x00\x02garbage", b"",
    ]:
        comfyui.send_raw(executor.client_id, junk)
    job = submission(save_graph())
    executor.submit(job)

    assert reporter.job(job.prompt_id)["status"] == "completed"


# -- the double itself ------------------------------------------------------------------------


def test_execution_frames_go_only_to_the_socket_that_posted(comfyui, executor, reporter):
    observer = simple_websocket.Client.connect(comfyui.url.replace("http://", "ws://") + "/ws?clientId=observer")
    try:
        assert comfyui.wait_client("observer", WAIT)
        job = submission(save_graph())
        executor.submit(job)
        assert reporter.job(job.prompt_id)["status"] == "completed"
        seen = []
        # The observer hears the queue grow and empty again (07b), and nothing of the run itself.
        while not (("status", 1) in seen and seen[-1] == ("status", 0)):
            message = observer.receive(timeout=WAIT)
            assert message is not None, seen
            frame = json.loads(message)
            if frame["type"] == "status":
                seen.append(("status", frame["data"]["status"]["exec_info"]["queue_remaining"]))
            else:
                seen.append((frame["type"],))
        assert {kind for kind, *_ in seen} == {"status"}
    finally:
        observer.close()



def recorded_prompt(name: str, case: str | None = None) -> dict:
    scenario = transcript(name)[case] if case else transcript(name)
    return next(call["request_json"] for call in scenario["http"] if call["path"] == "/prompt")


@pytest.mark.parametrize(
    ("name", "case"),
    [("01_success.json", None), ("02_cached_rerun.json", None), ("03_preview_and_save.json", None),
     ("05_errors.json", "5c_runtime_error_saveimage_outside_output"), ("06_interrupt.json", None)],
)
def test_double_sends_the_recorded_frames_in_the_recorded_order(comfyui, name, case):
    body = recorded_prompt(name, case)
    if name == "02_cached_rerun.json":
        post_json(comfyui.url + "/prompt", body)
        assert comfyui.wait_idle(WAIT)
    if name == "06_interrupt.json":
        for node in body["prompt"].values():  # the recorded sizes take seconds in Pillow
            node["inputs"].update({key: 16 for key in ("width", "height", "batch_size") if key in node["inputs"]})
        comfyui.pause_before("3")
    prompt_id = post_json(comfyui.url + "/prompt", body)["prompt_id"]
    if name == "06_interrupt.json":
        assert comfyui.wait_paused(WAIT)
        post_json(comfyui.url + "/interrupt", {})
    assert comfyui.wait_idle(WAIT)

    assert comfyui.frames[prompt_id] == [kind for kind in recorded_types(name, case) if kind != "status"]
    recorded = transcript(name)[case]["history_entry"] if case else transcript(name).get("history_entry")
    if recorded:
        record = comfyui.history(prompt_id)
        assert record["status"]["status_str"] == recorded["status"]["status_str"]
        assert [kind for kind, _ in record["status"]["messages"]] == [kind for kind, _ in recorded["status"]["messages"]]


def test_double_answers_http_like_comfyui(comfyui):
    recorded = {call["path"]: call["body"] for call in transcript("04_object_info.json")["calls"]}
    assert get_json(comfyui.url + "/object_info/EmptyImage") == recorded["/object_info/EmptyImage"]
    assert get_json(comfyui.url + "/object_info/NoSuchNode") == {}
    assert get_json(comfyui.url + "/history/unknown-id") == {}
    assert get_json(comfyui.url + "/prompt") == {"exec_info": {"queue_remaining": 0}}
    body = recorded_prompt("01_success.json")
    answer = post_json(comfyui.url + "/prompt", body)
    assert set(answer) == {"prompt_id", "number", "node_errors"}
    assert comfyui.wait_idle(WAIT)
    history = get_json(comfyui.url + "/history")
    assert list(history) == [answer["prompt_id"]]
    assert set(history[answer["prompt_id"]]) == set(transcript("01_success.json")["history_entry"])
    with urllib.request.urlopen(comfyui.url + "/view?filename=test_00001_.png&subfolder=studio&type=output") as view:
        assert view.read().startswith(b"\x89PNG")
    for query, status in [("filename=nope.png&type=output", 404), ("filename=../x.png&type=output", 400)]:
        with pytest.raises(urllib.error.HTTPError) as raised:
            urllib.request.urlopen(comfyui.url + "/view?" + query)
        assert raised.value.code == status
        raised.value.close()
    assert {"SaveImage", "PreviewImage", "SaveImageWebsocket"} <= {
        name for name, node in recorded_node_classes().items() if node.output_node
    }


def test_a_job_end_waits_for_its_start_that_another_thread_is_still_storing(comfyui, executor):
    # A reconcile on one thread can be storing a job's start while the socket thread learns its end;
    # were the end stored first, the history would keep the job with no start time and no duration.
    class SlowStart(RecordingReporter):
        def __init__(self):
            super().__init__()
            self.starting = threading.Event()
            self.go_on = threading.Event()

        def started(self, prompt_id, at):
            self.starting.set()
            self.go_on.wait(WAIT)  # a store write that takes a while
            super().started(prompt_id, at)

    reporter = SlowStart()
    executor.reporter = reporter
    executor.connect_wait = 0
    comfyui.drop_connections(refuse=True)  # the socket misses the job's execution_start frame
    comfyui.pause_before("2")
    job = submission(save_graph())
    executor.submit(job)
    assert comfyui.wait_paused(WAIT)
    reconcile = threading.Thread(target=executor.reconcile)  # finds the job running: reports its start
    reconcile.start()
    assert reporter.starting.wait(WAIT)
    comfyui.resume()
    comfyui.accept_connections()  # the reconnected socket finds the job ended in /history
    assert comfyui.wait_idle(WAIT)
    deadline = time.monotonic() + WAIT
    while executor.following() and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)  # room for an end report that does not wait for the start
    reporter.go_on.set()
    reconcile.join(WAIT)

    record = reporter.job(job.prompt_id)
    assert [call[0] for call in reporter.of(job.prompt_id) if call[0] != "progress"] == ["started", "completed"]
    assert record["status"] == "completed" and record["duration"] >= 0


# -- what a person found wrong with the studio's own jobs -------------------------------------------


def test_a_run_that_fails_after_a_save_reports_the_files_it_saved(comfyui, executor, reporter):
    graph = save_graph(name="kept")
    graph["9"] = graph.pop("3")  # saved first: ComfyUI runs output nodes highest id first (03_preview_and_save)
    graph["4"] = {"class_type": "ImageBlur", "inputs": {"image": ["1", 0], "blur_radius": 1, "sigma": 1.0}}
    graph["5"] = {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": f"{SUBFOLDER}/never"}}
    comfyui.fail_at("4")
    job = submission(graph)
    executor.submit(job)

    record = reporter.job(job.prompt_id)
    assert record["status"] == "error"
    assert [ref["filename"] for ref in record["outputs"]] == ["kept_00001_.png", "kept_00002_.png"]
    # The reconcile path reads the same from ComfyUI's history.
    outcome = history_outcome(comfyui.history(job.prompt_id), graph)
    assert (outcome["status"], outcome["outputs"]) == ("error", record["outputs"])


def test_a_queued_job_another_client_deletes_from_the_queue_settles_within_seconds(comfyui, executor, reporter):
    comfyui.hold()
    job = submission(save_graph())
    executor.submit(job)
    post_json(comfyui.url + "/queue", {"delete": [job.prompt_id]})  # 11_queue_delete_by_other_client

    record = reporter.job(job.prompt_id, timeout=3)
    assert (record["status"], record["error"]) == ("error", REMOVED)
    assert record["started_at"] is None
    comfyui.release()


def test_reconnect_attempts_stay_frequent_so_jobs_reconcile_soon_after_comfyui_answers(comfyui, reporter):
    assert ComfyUIExecutor(reporter, comfyui.url).max_reconnect_delay <= 2.0


def test_history_pages_read_every_entry_oldest_first_as_recorded(comfyui):
    recorded = transcript("10_history_paging.json")
    # The recording: offset counts from the oldest entry, and a short page ends the history.
    assert [page["ids"] for page in recorded["pages"]] == [
        recorded["posted_in_order"][:100], recorded["posted_in_order"][100:], []]
    assert recorded["newest_3"] == recorded["posted_in_order"][-3:]
    ids = [post_json(comfyui.url + "/prompt", {"prompt": save_graph(color=number, batch=1)})["prompt_id"] for number in range(7)]
    assert comfyui.wait_idle(WAIT)
    executor = ComfyUIExecutor(RecordingReporter(), comfyui.url)
    pages = list(history_pages(executor._request, page_size=3))
    assert [len(page) for page in pages] == [3, 3, 1]
    assert [prompt_id for page in pages for prompt_id in page] == ids
    assert list(get_json(comfyui.url + "/history?max_items=3")) == ids[-3:]


def test_an_observer_gets_status_frames_only_for_other_clients_prompts(comfyui):
    recorded = transcript("09_other_clients.json")
    assert "execution_start" not in recorded["studio_ws_types_in_order"]
    assert "execution_start" in recorded["page_ws_types_in_order"]
    # Both prompts' graphs are in /queue and /history with the page's UI workflow in extra_data.
    page_id = recorded["prompt_A_page_with_ui_workflow"]
    entry = next(call["body"][page_id] for call in recorded["http"] if call["path"] == f"/history/{page_id}")
    assert "workflow" in entry["prompt"][3]["extra_pnginfo"]
