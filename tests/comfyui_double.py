"""A ComfyUI test double: real HTTP and a real websocket on 127.0.0.1, built from recorded transcripts.

Frame shapes, frame order, 400 bodies and history records are copied from the transcripts of a real
ComfyUI 0.3.64 in ``tests/comfyui_transcripts/`` (copies of ``../shared/comfyui/``) and filled in for
each prompt; the nodes really run (with Pillow) and write real files, so the runner can find them.

    with ComfyUIDouble(output_dir) as comfyui:
        executor = ComfyUIExecutor(reporter, comfyui.url)
        comfyui.pause_before("3")        # the next run waits before node 3 ...
        comfyui.wait_paused(5)
        comfyui.drop_connections(refuse=True)   # ... while the socket goes away
        comfyui.resume()

Scenarios: success, cached re-run, preview beside save, validation errors, runtime errors (a save
outside the output folder, or ``fail_at``), interrupt (POST /interrupt), dropped connections
(``drop_connections``), a restart that forgets everything (``restart``), a held queue (``hold``) and a
hung run (``pause_before`` never resumed).
"""
from __future__ import annotations

import copy
import functools
import json
import os
import queue
import random
import re
import shutil
import string
import struct
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from dataclasses import field
from io import BytesIO
from pathlib import Path

from flask import Flask
from flask import Response
from flask import jsonify
from flask import request
from flask import send_file
from flask_sock import Sock
from PIL import Image
from PIL import ImageFilter
from PIL import ImageOps
from werkzeug.serving import WSGIRequestHandler
from werkzeug.serving import make_server

TRANSCRIPTS = Path(__file__).resolve().parent / "comfyui_transcripts"
_CLOSE = object()


# -- the recordings ---------------------------------------------------------------------------


@functools.cache
def _transcript(name: str) -> dict:
    """Read a transcript once."""
    return json.loads((TRANSCRIPTS / name).read_text())


def transcript(name: str) -> dict:
    """A recorded transcript (a fresh copy)."""
    return copy.deepcopy(_transcript(name))


def recorded_frame(kind: str, name: str = "01_success.json") -> dict:
    """The data of the first recorded frame of a type (a fresh copy)."""
    for scenario in _scenarios(_transcript(name)):
        for message in scenario.get("ws_messages", []):
            if message.get("type") == kind:
                return copy.deepcopy(message["data"])
    raise KeyError(f"no {kind} frame in {name}")


def recorded_rejection(case: str) -> dict:
    """The 400 body ComfyUI answered for one of the validation cases of 05_errors.json."""
    return copy.deepcopy(_transcript("05_errors.json")[case]["http"][0]["body"])


def recorded_types(name: str, case: str | None = None) -> list[str]:
    """The recorded frame types of a transcript, in order, without the closing opcode."""
    scenario = _transcript(name)[case] if case else _transcript(name)
    return [kind for kind in scenario["ws_types_in_order"] if not kind.startswith("opcode")]


def _scenarios(document):
    """Every recorded scenario (a dict with ws_messages or http) inside a transcript."""
    if isinstance(document, dict):
        if "ws_messages" in document or "http" in document:
            yield document
        for value in document.values():
            if isinstance(value, dict):
                yield from _scenarios(value)


def _all_scenarios():
    """Every recorded scenario of every transcript."""
    for path in sorted(TRANSCRIPTS.glob("*.json")):
        yield from _scenarios(_transcript(path.name))


@dataclass
class NodeClass:
    """What the double knows of a node class: its required inputs and whether it is an output node."""

    name: str
    required: list
    output_node: bool = False
    config: dict = field(default_factory=dict)


# Classes no transcript used successfully; inputs from ComfyUI's nodes.py and nodes_images.py. The
# double gives them simple Pillow behaviour so the studio's workflows can run against it.
UNRECORDED_NODES = {
    "LoadImage": NodeClass("LoadImage", ["image"]),
    "SaveAnimatedWEBP": NodeClass(
        "SaveAnimatedWEBP", ["images", "filename_prefix", "fps", "lossless", "quality", "method"], True
    ),
    "ImageBlur": NodeClass("ImageBlur", ["image", "blur_radius", "sigma"]),
    "ImageBlend": NodeClass("ImageBlend", ["image1", "image2", "blend_factor", "blend_mode"]),
    "ImageBatch": NodeClass("ImageBatch", ["image1", "image2"]),
    "RepeatImageBatch": NodeClass("RepeatImageBatch", ["image", "amount"]),
}


@functools.cache
def recorded_node_classes() -> dict:
    """Node classes as the transcripts show them: inputs of accepted prompts, output nodes of history records."""
    classes = {}
    records = []
    for scenario in _all_scenarios():
        for call in scenario.get("http", []):
            if call["method"] == "POST" and call["path"] == "/prompt" and call["status"] == 200:
                for node in call["request_json"]["prompt"].values():
                    classes.setdefault(node["class_type"], NodeClass(node["class_type"], list(node["inputs"])))
            body = call.get("body")
            if call["method"] == "GET" and call["path"].startswith("/history/") and isinstance(body, dict):
                records.extend(body.values())
        if isinstance(scenario.get("history_entry"), dict):
            records.append(scenario["history_entry"])
    # ComfyUI lists the output nodes it will execute as the fifth item of a history record's prompt.
    for record in records:
        _, _, graph, _, outputs = record["prompt"]
        for node_id in outputs:
            classes[graph[node_id]["class_type"]].output_node = True
    for call in _transcript("04_object_info.json")["calls"]:
        for name, info in call["body"].items():
            required = info["input"]["required"]
            classes[name] = NodeClass(name, list(required), info["output_node"], required)
    return classes


def _is_link(value) -> bool:
    """Whether an input value is a link [node_id, slot]."""
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], (str, int)) and isinstance(value[1], int)


def _node_order(node_id) -> tuple:
    """Sort node ids numerically where they are numbers."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.findall(r"\d+|\D+", str(node_id)))


def _now_ms() -> int:
    """Now in ComfyUI's timestamps: milliseconds since the epoch."""
    return int(time.time() * 1000)


# -- one prompt -------------------------------------------------------------------------------


@dataclass
class _Prompt:
    number: int
    prompt_id: str
    graph: dict
    extra_data: dict
    outputs: list
    generation: int

    @property
    def client_id(self):
        """The clientId whose socket gets this prompt's frames."""
        return self.extra_data.get("client_id")

    def entry(self) -> list:
        """The prompt as /queue and /history list it."""
        return [self.number, self.prompt_id, self.graph, self.extra_data, self.outputs]


class _NodeFailure(Exception):
    def __init__(self, exception_type: str, message: str):
        super().__init__(message)
        self.exception_type = exception_type
        self.message = message


class _Abandoned(Exception):
    """The double restarted or stopped under a running prompt."""


@dataclass
class _Socket:
    client_id: str
    frames: queue.Queue = field(default_factory=queue.Queue)
    closed: threading.Event = field(default_factory=threading.Event)


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, *args, **kwargs):
        """Keep test output free of access logs."""
        pass


# -- the double -------------------------------------------------------------------------------


class ComfyUIDouble:
    """A ComfyUI server on 127.0.0.1 that behaves like the recorded one."""

    def __init__(self, output_dir, input_dir=None, temp_dir=None, extra_nodes: dict | None = None):
        """Prepare a double writing outputs under ``output_dir``; start() serves it."""
        self.output_dir = Path(output_dir).resolve()
        self.input_dir = Path(input_dir).resolve() if input_dir else self.output_dir.parent / "input"
        self._own_temp = temp_dir is None
        self.temp_dir = Path(temp_dir or tempfile.mkdtemp(prefix="comfyui-temp-")).resolve()
        self.node_classes = dict(UNRECORDED_NODES)
        self.node_classes.update(recorded_node_classes())
        self.node_classes.update(extra_nodes or {})
        # ComfyUI before caller-chosen prompt ids (about 0.3.40) minted its own: set this to behave so.
        self.mints_prompt_ids = False
        self.requests: list = []  # (method, path, json body) of every HTTP request, for assertions
        self.frames: dict = {}  # prompt_id -> frame types emitted for it, whether a socket got them or not
        self._cond = threading.Condition()
        self._sockets: dict = {}  # clientId -> _Socket getting frames (ComfyUI keeps the newest per id)
        self._open: list = []  # every open _Socket
        self._refusing = False
        self.refused_sockets = 0  # websocket connects turned away while refusing
        self._pending: list = []
        self._running: _Prompt | None = None
        self._last_node = None
        self._history: dict = {}
        self._cache: dict = {}
        self._number = 0
        self._generation = 0
        self._interrupt = False
        self._held = False
        self._pause_node = None
        self._paused = False
        self._failures: dict = {}
        self._stopping = False
        self._app = self._make_app()
        self._server = make_server("127.0.0.1", 0, self._app, threaded=True, request_handler=_QuietHandler)
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._server_thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="comfyui-double-http", daemon=True
        )
        self._worker = threading.Thread(target=self._work, name="comfyui-double-worker", daemon=True)

    # -- life --------------------------------------------------------------------------------

    def start(self) -> "ComfyUIDouble":
        """Serve HTTP and websockets and start the queue worker."""
        self._server_thread.start()
        self._worker.start()
        return self

    def stop(self) -> None:
        """Stop the worker, close every socket, stop serving and remove the temp folder."""
        with self._cond:
            self._stopping = True
            self._generation += 1
            self._cond.notify_all()
        self._worker.join(timeout=5)
        self.drop_connections()
        self._server.shutdown()
        self._server.server_close()
        self._server_thread.join(timeout=5)
        if self._own_temp:
            shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __enter__(self) -> "ComfyUIDouble":
        """Start serving."""
        return self.start()

    def __exit__(self, *exc_info) -> None:
        """Stop serving."""
        self.stop()

    def studio_settings(self) -> dict:
        """Return the app config that points a studio at this double and its output and input folders."""
        return {
            "STUDIO_COMFYUI_URL": self.url,
            "STUDIO_OUTPUT_DIR": str(self.output_dir),
            "STUDIO_INPUT_DIR": str(self.input_dir),
        }

    # -- scripting ---------------------------------------------------------------------------

    def hold(self) -> None:
        """Keep posted prompts pending until release()."""
        with self._cond:
            self._held = True

    def release(self) -> None:
        """Let the worker take pending prompts again."""
        with self._cond:
            self._held = False
            self._cond.notify_all()

    def pause_before(self, node_id: str) -> None:
        """Make the next run wait before executing ``node_id`` until resume(), an interrupt or a restart."""
        with self._cond:
            self._pause_node = str(node_id)

    def wait_paused(self, timeout: float) -> bool:
        """Wait until a run waits at its pause point."""
        with self._cond:
            return self._cond.wait_for(lambda: self._paused, timeout)

    def resume(self) -> None:
        """Let a paused run go on."""
        with self._cond:
            self._pause_node = None
            self._cond.notify_all()

    def fail_at(self, node_id: str, exception_type: str = "RuntimeError", message: str = "boom") -> None:
        """Make the next execution of ``node_id`` raise (an ``execution_error``)."""
        with self._cond:
            self._failures[str(node_id)] = (exception_type, message)

    def wait_idle(self, timeout: float) -> bool:
        """Wait until nothing runs and nothing is pending."""
        with self._cond:
            return self._cond.wait_for(lambda: self._running is None and not self._pending, timeout)

    def wait_client(self, client_id: str, timeout: float) -> bool:
        """Wait until a websocket with this clientId is registered (after ComfyUI's first status frame)."""
        with self._cond:
            return self._cond.wait_for(lambda: client_id in self._sockets, timeout)

    def drop_connections(self, refuse: bool = False) -> None:
        """Close every websocket from the server side; with ``refuse``, turn new ones away (503) until accept_connections()."""
        with self._cond:
            self._refusing = refuse
            sockets = list(self._open)
        for sock in sockets:
            sock.frames.put(_CLOSE)
        for sock in sockets:
            sock.closed.wait(5)

    def send_raw(self, client_id: str, payload) -> None:
        """Send any text or bytes to one client's socket, to see what the client survives."""
        with self._cond:
            sock = self._sockets[client_id]
        sock.frames.put(payload)

    def accept_connections(self) -> None:
        """Accept websockets again."""
        with self._cond:
            self._refusing = False

    def restart(self, down: bool = False) -> None:
        """Behave like a restarted ComfyUI: queue, running prompt, history and cache are gone; sockets drop.

        With ``down``, websockets are refused until accept_connections(), as while the real one starts
        again (12_restart_mid_job: the old socket ends with code 1005, then connects are refused).
        """
        with self._cond:
            self._generation += 1
            self._pending.clear()
            self._history.clear()
            self._cache.clear()
            self._running = None
            self._last_node = None
            self._interrupt = False
            self._pause_node = None
            self._number = 0
            self._cond.notify_all()
        self.drop_connections(refuse=down)

    def go_down(self) -> None:
        """Stop listening, queue and running prompt kept (a host cut off): sockets end and connects are
        refused (13_two_servers: ``ConnectionRefusedError``) until come_back()."""
        self.drop_connections()
        self._server.shutdown()
        self._server.server_close()
        self._server_thread.join(timeout=5)

    def come_back(self) -> None:
        """Listen again on the same port, with whatever ran meanwhile in the history."""
        port = int(self.url.rsplit(":", 1)[1])
        self._server = make_server("127.0.0.1", port, self._app, threaded=True, request_handler=_QuietHandler)
        self._server_thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="comfyui-double-http", daemon=True
        )
        self._server_thread.start()

    def history(self, prompt_id: str) -> dict | None:
        """ComfyUI's history record of a prompt."""
        with self._cond:
            return copy.deepcopy(self._history.get(prompt_id))

    # -- HTTP and websocket ------------------------------------------------------------------

    def _make_app(self) -> Flask:
        """Build the Flask app with ComfyUI's routes."""
        app = Flask("comfyui_double")
        # aiohttp keeps a dict's order (10_history_paging: /history lists oldest first); Flask would sort keys.
        app.json.sort_keys = False
        sock = Sock(app)
        double = self

        @app.before_request
        def record_and_refuse():
            """Note every request; turn websockets away while refusing."""
            body = request.get_json(silent=True) if request.method == "POST" else None
            double.requests.append((request.method, request.full_path.rstrip("?"), body))
            if request.path == "/ws" and double._refusing:
                double.refused_sockets += 1
                return Response("ComfyUI is restarting", status=503)
            return None

        @app.get("/prompt")
        def queue_info():
            """Answer the queue size."""
            with double._cond:
                return jsonify(double._queue_info())

        @app.post("/prompt")
        def post_prompt():
            """Validate and queue a prompt."""
            return double._post_prompt(request.get_json(silent=True) or {})

        @app.get("/queue")
        def get_queue():
            """List running and pending prompts."""
            with double._cond:
                running = [double._running.entry()] if double._running else []
                pending = [prompt.entry() for prompt in double._pending]
            return jsonify({"queue_running": running, "queue_pending": pending})

        @app.post("/queue")
        def post_queue():
            """Delete pending prompts or clear the queue."""
            body = request.get_json(silent=True) or {}
            with double._cond:
                if body.get("clear"):
                    double._pending.clear()
                for prompt_id in body.get("delete") or []:
                    double._pending = [p for p in double._pending if p.prompt_id != prompt_id]
                double._cond.notify_all()
            double._broadcast_status()
            return Response(status=200)

        @app.get("/history")
        def get_history():
            """List finished prompts, oldest first."""
            with double._cond:
                items = list(double._history.items())
            offset = request.args.get("offset", -1, type=int)
            max_items = request.args.get("max_items", type=int)
            # 10_history_paging: offset counts from the oldest entry; without one, max_items takes the newest.
            if offset < 0:
                offset = max(0, len(items) - max_items) if max_items is not None else 0
            end = offset + max_items if max_items is not None else len(items)
            return jsonify(dict(items[offset:end]))

        @app.get("/history/<prompt_id>")
        def get_history_item(prompt_id):
            """Answer one finished prompt, or {} when unknown."""
            with double._cond:
                record = double._history.get(prompt_id)
            return jsonify({prompt_id: record} if record else {})

        @app.post("/history")
        def post_history():
            """Delete history records or clear them."""
            body = request.get_json(silent=True) or {}
            with double._cond:
                if body.get("clear"):
                    double._history.clear()
                for prompt_id in body.get("delete") or []:
                    double._history.pop(prompt_id, None)
            return Response(status=200)

        @app.post("/interrupt")
        def interrupt():
            """Interrupt the running prompt (or only the named one)."""
            body = request.get_json(silent=True) or {}
            with double._cond:
                running = double._running
                target = body.get("prompt_id")
                # A targeted interrupt of a prompt that is not running is ignored (07_queue_ops).
                if running is not None and (target is None or target == running.prompt_id):
                    double._interrupt = True
                    double._cond.notify_all()
            return Response(status=200)

        @app.get("/object_info/<name>")
        def object_info(name):
            """Describe a node class, as recorded where it was."""
            for call in _transcript("04_object_info.json")["calls"]:
                if call["path"] == f"/object_info/{name}":
                    return jsonify(call["body"])
            node_class = double.node_classes.get(name)
            if node_class is None:
                return jsonify({})
            required = {input_name: node_class.config.get(input_name, ["*", {}]) for input_name in node_class.required}
            return jsonify({name: {
                "input": {"required": required}, "input_order": {"required": node_class.required},
                "name": name, "display_name": name, "output_node": node_class.output_node,
            }})

        @app.get("/view")
        def view():
            """Serve an output, temp or input file."""
            filename = request.args.get("filename", "")
            folders = {"output": double.output_dir, "temp": double.temp_dir, "input": double.input_dir}
            folder = folders.get(request.args.get("type", "output"))
            if not filename or filename.startswith("/") or ".." in filename or folder is None:
                return Response(status=400)
            full = (folder / request.args.get("subfolder", "")).resolve()
            if os.path.commonpath((full, folder)) != str(folder):
                return Response(status=403)
            path = full / filename
            if not path.is_file():
                return Response(status=404)
            return send_file(path, download_name=filename)

        @sock.route("/ws")
        def websocket(ws):
            """Follow prompts over a websocket."""
            double._serve_socket(ws, request.args.get("clientId") or uuid.uuid4().hex)

        return app

    def _serve_socket(self, ws, client_id: str) -> None:
        """Send this socket its frames from its own queue; only this thread calls send()."""
        sock = _Socket(client_id)
        with self._cond:
            # Reusing a clientId replaces the earlier socket, which stays open and gets nothing (server.py).
            self._sockets[client_id] = sock
            self._open.append(sock)
            hello = {"status": self._queue_info(), "sid": client_id}
            running = self._running
            last_node = self._last_node
            self._cond.notify_all()
        try:
            ws.send(json.dumps({"type": "status", "data": hello}))
            # On reconnect ComfyUI tells the executing client its current node, with no prompt_id.
            if running is not None and running.client_id == client_id and last_node is not None:
                ws.send(json.dumps({"type": "executing", "data": {"node": last_node}}))
            while ws.connected:
                try:
                    frame = sock.frames.get(timeout=0.05)
                except queue.Empty:
                    continue
                if frame is _CLOSE:
                    break
                ws.send(frame)
        except Exception:  # the client went away; ComfyUI logs and forgets the socket the same way
            pass
        finally:
            with self._cond:
                if self._sockets.get(client_id) is sock:
                    del self._sockets[client_id]
                self._open.remove(sock)
            try:
                ws.close()
            except Exception:
                pass
            sock.closed.set()

    def _queue_info(self) -> dict:
        """The exec_info ComfyUI sends in status frames."""
        return {"exec_info": {"queue_remaining": len(self._pending) + (1 if self._running else 0)}}

    def _broadcast_status(self) -> None:
        """Send a status frame to every registered socket."""
        with self._cond:
            frame = json.dumps({"type": "status", "data": {"status": self._queue_info()}})
            sockets = list(self._sockets.values())
        for sock in sockets:
            sock.frames.put(frame)

    def _emit(self, prompt: _Prompt, kind: str, data) -> None:
        """Send one frame of a prompt to the socket that posted it, as ComfyUI does."""
        with self._cond:
            if prompt.generation != self._generation:
                raise _Abandoned()
            self.frames.setdefault(prompt.prompt_id, []).append(kind if isinstance(data, dict) else "binary")
            if prompt.client_id:
                targets = [self._sockets[prompt.client_id]] if prompt.client_id in self._sockets else []
            elif kind == "progress_state":
                # A prompt posted without client_id still has its progress_state broadcast (07b).
                targets = list(self._sockets.values())
            else:
                targets = []
        payload = json.dumps({"type": kind, "data": data}) if isinstance(data, dict) else bytes(data)
        for sock in targets:
            sock.frames.put(payload)

    # -- POST /prompt ------------------------------------------------------------------------

    def _post_prompt(self, body: dict):
        """Queue a valid prompt, or answer the recorded 400."""
        rejection = self._validate(body)
        if rejection is not None:
            return jsonify(rejection), 400
        graph = body["prompt"]
        outputs = sorted(
            (node_id for node_id, node in graph.items() if self.node_classes[node["class_type"]].output_node),
            key=_node_order, reverse=True,
        )
        extra_data = dict(body.get("extra_data") or {})
        if "client_id" in body:
            extra_data["client_id"] = body["client_id"]
        with self._cond:
            number = self._number
            self._number += 1
            if body.get("front"):
                number = -number
            prompt = _Prompt(
                number,
                str(uuid.uuid4() if self.mints_prompt_ids else body.get("prompt_id") or uuid.uuid4()),
                graph,
                extra_data,
                outputs,
                self._generation,
            )
            self._pending.append(prompt)
            self._pending.sort(key=lambda p: p.number)
            self._cond.notify_all()
        self._broadcast_status()
        return jsonify({"prompt_id": prompt.prompt_id, "number": number, "node_errors": {}})

    def _validate(self, body: dict) -> dict | None:
        """Answer the recorded 400 body for an invalid prompt, else None (ComfyUI's validate_prompt order)."""
        if "prompt" not in body:
            return recorded_rejection("5b7_no_prompt_key")
        graph = body["prompt"]
        for node_id, node in graph.items():
            if "class_type" not in node:
                answer = recorded_rejection("5b2_missing_class_type_key")
                answer["error"]["details"] = f"Node ID '#{node_id}'"
                return answer
            if node["class_type"] not in self.node_classes:
                answer = recorded_rejection("5b_missing_node_class")
                answer["error"]["message"] = f"Cannot execute because node {node['class_type']} does not exist."
                answer["error"]["details"] = f"Node ID '#{node_id}'"
                return answer
        outputs = [node_id for node_id, node in graph.items() if self.node_classes[node["class_type"]].output_node]
        if not outputs:
            return recorded_rejection("5b5_no_output_nodes")
        node_errors = {}
        for output in outputs:
            for node_id, errors in self._check_upstream(graph, output, set()):
                entry = node_errors.setdefault(
                    node_id, {"errors": errors, "dependent_outputs": [], "class_type": graph[node_id]["class_type"]}
                )
                if output not in entry["dependent_outputs"]:
                    entry["dependent_outputs"].append(output)
        if node_errors:
            answer = recorded_rejection("5a_wrong_input_type")
            answer["node_errors"] = node_errors
            return answer
        return None

    def _check_upstream(self, graph: dict, node_id: str, seen: set):
        """Yield (node_id, errors) for a node and what it links to."""
        if node_id in seen:
            return
        seen.add(node_id)
        node = graph[node_id]
        errors = self._check_inputs(node)
        for input_name, value in node.get("inputs", {}).items():
            if not _is_link(value):
                continue
            if str(value[0]) not in graph:
                error = recorded_rejection("5b4_link_to_missing_node")["node_errors"]["2"]["errors"][0]
                error["details"] = error["extra_info"]["exception_message"] = repr(str(value[0]))
                error["extra_info"]["input_name"] = input_name
                error["extra_info"]["linked_node"] = [node_id, value[1]]
                errors.append(error)
            else:
                yield from self._check_upstream(graph, str(value[0]), seen)
        if errors:
            yield node_id, errors

    def _check_inputs(self, node: dict) -> list:
        """The validation errors of one node's inputs."""
        node_class = self.node_classes[node["class_type"]]
        inputs = node.get("inputs", {})
        errors = []
        for input_name in node_class.required:
            if input_name not in inputs:
                error = recorded_rejection("5b3_missing_required_input")["node_errors"]["1"]["errors"][0]
                error["details"] = error["extra_info"]["input_name"] = input_name
                errors.append(error)
                continue
            value = inputs[input_name]
            config = node_class.config.get(input_name)
            if _is_link(value) or not config or config[0] != "INT":
                continue
            limits = config[1] if len(config) > 1 else {}
            try:
                number = int(value)
            except (TypeError, ValueError) as exc:
                error = recorded_rejection("5a_wrong_input_type")["node_errors"]["1"]["errors"][0]
                error["details"] = f"{input_name}, {value}, {exc}"
                error["extra_info"].update(input_name=input_name, input_config=config, received_value=value, exception_message=str(exc))
                errors.append(error)
                continue
            if "min" in limits and number < limits["min"]:
                error = recorded_rejection("5a2_value_below_min")["node_errors"]["1"]["errors"][0]
                error["message"] = f"Value {number} smaller than min of {limits['min']}"
                error["details"] = input_name
                error["extra_info"].update(input_name=input_name, input_config=config, received_value=number)
                errors.append(error)
            elif "max" in limits and number > limits["max"]:
                error = recorded_rejection("5a2_value_below_min")["node_errors"]["1"]["errors"][0]
                error["type"] = "value_bigger_than_max"
                error["message"] = f"Value {number} bigger than max of {limits['max']}"
                error["details"] = input_name
                error["extra_info"].update(input_name=input_name, input_config=config, received_value=number)
                errors.append(error)
        if node["class_type"] == "LoadImage" and "image" in inputs:
            if not (self.input_dir / str(inputs["image"])).is_file():
                error = recorded_rejection("5b6_loadimage_missing_file")["node_errors"]["1"]["errors"][0]
                error["details"] = f"image - Invalid image file: {inputs['image']}"
                errors.append(error)
        return errors

    # -- the worker --------------------------------------------------------------------------

    def _work(self) -> None:
        """Run pending prompts one at a time, like ComfyUI's queue worker."""
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._stopping or (self._pending and not self._held))
                if self._stopping:
                    return
                prompt = self._pending.pop(0)
                self._running = prompt
                self._interrupt = False  # ComfyUI clears the interrupt flag when a prompt starts
            self._broadcast_status()
            try:
                self._execute(prompt)
            except _Abandoned:
                pass
            finally:
                with self._cond:
                    if self._running is prompt:
                        self._running = None
                    self._last_node = None
                    self._paused = False
                    self._cond.notify_all()

    def _execute(self, prompt: _Prompt) -> None:
        """Run a prompt, sending the frames ComfyUI sends in the order it sends them."""
        graph = prompt.graph
        order = self._execution_order(graph, prompt.outputs)
        signatures = {node_id: self._signature(graph, node_id) for node_id in graph}
        with self._cond:
            cache = dict(self._cache)
        cached = [
            node_id for node_id in graph
            if node_id in order and signatures[node_id] in cache and graph[node_id]["class_type"] != "SaveImageWebsocket"
        ]
        messages = []
        start = {"prompt_id": prompt.prompt_id, "timestamp": _now_ms()}
        self._emit(prompt, "execution_start", start)
        messages.append(["execution_start", start])
        cached_frame = {"nodes": cached, "prompt_id": prompt.prompt_id, "timestamp": _now_ms()}
        self._emit(prompt, "execution_cached", cached_frame)
        messages.append(["execution_cached", cached_frame])
        results, outputs, executed, states = {}, {}, [], {}
        for node_id in order:
            node = graph[node_id]
            if node_id in cached:
                images, ui = cache[signatures[node_id]]
                results[node_id] = images
                if ui is not None:
                    # A cached output node is not executed again, but its "executed" frame is replayed.
                    outputs[node_id] = ui
                    self._emit(prompt, "executed", self._executed_frame(prompt, node_id, ui))
                    states[node_id] = self._node_state(prompt, node_id, 1, 1, "finished")
                    self._emit(prompt, "progress_state", {"prompt_id": prompt.prompt_id, "nodes": copy.deepcopy(states)})
                continue
            self._wait_at_pause_point(prompt, node_id)
            states[node_id] = self._node_state(prompt, node_id, 0.0, 1.0, "running")
            self._emit(prompt, "progress_state", {"prompt_id": prompt.prompt_id, "nodes": copy.deepcopy(states)})
            with self._cond:
                self._last_node = node_id
                interrupted = self._interrupt
                failure = self._failures.pop(node_id, None)
            self._emit(prompt, "executing", {"node": node_id, "display_node": node_id, "prompt_id": prompt.prompt_id})
            if interrupted:
                frame = recorded_frame("execution_interrupted", "06_interrupt.json")
                frame.update(
                    prompt_id=prompt.prompt_id, node_id=node_id, node_type=node["class_type"],
                    executed=list(executed), timestamp=_now_ms(),
                )
                self._emit(prompt, "execution_interrupted", frame)
                messages.append(["execution_interrupted", frame])
                self._finish(prompt, "error", outputs, messages, results, signatures)
                return
            try:
                if failure:
                    raise _NodeFailure(*failure)
                images, ui = self._run_node(prompt, node_id, results, states)
            except _NodeFailure as error:
                frame = recorded_frame("execution_error", "05_errors.json")
                frame.update(
                    prompt_id=prompt.prompt_id, node_id=node_id, node_type=node["class_type"],
                    executed=list(executed), exception_message=error.message, exception_type=error.exception_type,
                    current_inputs={name: [repr(value)] for name, value in node["inputs"].items()},
                    current_outputs=list(order), timestamp=_now_ms(),
                )
                self._emit(prompt, "execution_error", frame)
                messages.append(["execution_error", frame])
                self._finish(prompt, "error", outputs, messages, results, signatures)
                return
            results[node_id] = images
            executed.append(node_id)
            if ui is not None:
                outputs[node_id] = ui
                self._emit(prompt, "executed", self._executed_frame(prompt, node_id, ui))
            if states[node_id]["state"] != "finished":
                states[node_id] = self._node_state(prompt, node_id, 1.0, 1.0, "finished")
                self._emit(prompt, "progress_state", {"prompt_id": prompt.prompt_id, "nodes": copy.deepcopy(states)})
        success = {"prompt_id": prompt.prompt_id, "timestamp": _now_ms()}
        self._emit(prompt, "execution_success", success)
        messages.append(["execution_success", success])
        self._finish(prompt, "success", outputs, messages, results, signatures)

    def _finish(self, prompt, status_str, outputs, messages, results, signatures) -> None:
        """Record the run in the history, then say the queue changed, then send the closing executing frame."""
        with self._cond:
            if prompt.generation != self._generation:
                raise _Abandoned()
            self._history[prompt.prompt_id] = {
                "prompt": prompt.entry(),
                "outputs": outputs,
                "status": {"status_str": status_str, "completed": status_str == "success", "messages": messages},
                "meta": {
                    node_id: {"node_id": node_id, "display_node": node_id, "parent_node": None, "real_node_id": node_id}
                    for node_id in outputs
                },
            }
            # ComfyUI's classic cache keeps the nodes of the latest prompt.
            self._cache = {signatures[node_id]: (images, outputs.get(node_id)) for node_id, images in results.items()}
            self._running = None
            self._last_node = None
        self._broadcast_status()
        self._emit(prompt, "executing", {"node": None, "prompt_id": prompt.prompt_id})

    def _wait_at_pause_point(self, prompt: _Prompt, node_id: str) -> None:
        """Wait before a node while a test holds the run there."""
        with self._cond:
            if self._pause_node != node_id:
                return
            self._paused = True
            self._cond.notify_all()
            self._cond.wait_for(
                lambda: self._pause_node != node_id or self._interrupt or prompt.generation != self._generation
            )
            self._paused = False
            self._pause_node = None
            if prompt.generation != self._generation:
                raise _Abandoned()

    def _execution_order(self, graph: dict, outputs: list) -> list:
        """Each output node after what it needs, output nodes highest id first (03_preview_and_save runs 1, 3, 2)."""
        order = []

        def visit(node_id):
            if node_id in order:
                return
            for value in graph[node_id].get("inputs", {}).values():
                if _is_link(value):
                    visit(str(value[0]))
            order.append(node_id)

        for output in outputs:
            visit(output)
        return order

    def _signature(self, graph: dict, node_id: str) -> str:
        """A node's cache key: its class and inputs, links resolved to their signatures."""
        node = graph[node_id]
        inputs = {
            name: self._signature(graph, str(value[0])) + f"#{value[1]}" if _is_link(value) else value
            for name, value in sorted(node.get("inputs", {}).items())
        }
        return json.dumps([node["class_type"], inputs], sort_keys=True, default=str)

    def _node_state(self, prompt, node_id, value, maximum, state) -> dict:
        """One node's entry of a progress_state frame, shaped like the recorded one."""
        entry = copy.deepcopy(recorded_frame("progress_state")["nodes"]["1"])
        entry.update(
            value=value, max=maximum, state=state, node_id=node_id, prompt_id=prompt.prompt_id,
            display_node_id=node_id, real_node_id=node_id,
        )
        return entry

    def _executed_frame(self, prompt, node_id, ui) -> dict:
        """The data of an executed frame."""
        return {"node": node_id, "display_node": node_id, "output": ui, "prompt_id": prompt.prompt_id}

    # -- the nodes ---------------------------------------------------------------------------

    def _run_node(self, prompt: _Prompt, node_id: str, results: dict, states: dict):
        """Run one node with Pillow; answer (images, ui output or None)."""
        node = prompt.graph[node_id]
        kind = node["class_type"]
        inputs = {
            name: results[str(value[0])] if _is_link(value) else value for name, value in node.get("inputs", {}).items()
        }
        if kind == "EmptyImage":
            color = int(inputs["color"])
            rgb = ((color >> 16) & 255, (color >> 8) & 255, color & 255)
            size = (int(inputs["width"]), int(inputs["height"]))
            return [Image.new("RGB", size, rgb) for _ in range(int(inputs["batch_size"]))], None
        if kind == "LoadImage":
            with Image.open(self.input_dir / inputs["image"]) as image:
                return [image.convert("RGB")], None
        if kind == "ImageInvert":
            return [ImageOps.invert(image.convert("RGB")) for image in inputs["image"]], None
        if kind == "ImageScale":
            size = (int(inputs["width"]), int(inputs["height"]))
            return [image.resize(size) for image in inputs["image"]], None
        if kind == "ImageBlur":
            radius = float(inputs["blur_radius"])
            return [image.filter(ImageFilter.GaussianBlur(radius)) for image in inputs["image"]], None
        if kind == "ImageBatch":
            return list(inputs["image1"]) + list(inputs["image2"]), None
        if kind == "ImageBlend":  # "normal" mode: image1*(1-f) + image2*f
            factor = float(inputs["blend_factor"])
            pairs = zip(inputs["image1"], inputs["image2"])
            return [Image.blend(first, second.resize(first.size), factor) for first, second in pairs], None
        if kind == "RepeatImageBatch":
            return list(inputs["image"]) * int(inputs["amount"]), None
        if kind == "SaveImage":
            return [], {"images": self._save(inputs["images"], inputs["filename_prefix"], self.output_dir, "output")}
        if kind == "PreviewImage":
            prefix = "ComfyUI_temp_" + "".join(random.choice(string.ascii_lowercase) for _ in range(5))
            return [], {"images": self._save(inputs["images"], prefix, self.temp_dir, "temp")}
        if kind == "SaveAnimatedWEBP":
            images = inputs["images"]
            folder, name, counter, subfolder = self._save_path(inputs["filename_prefix"], self.output_dir)
            filename = f"{name}_{counter:05}_.webp"
            duration = int(1000.0 / float(inputs.get("fps") or 6.0))
            images[0].save(folder / filename, save_all=True, append_images=images[1:], duration=duration)
            ref = {"filename": filename, "subfolder": subfolder, "type": "output"}
            return [], {"images": [ref], "animated": [len(images) != 1]}
        if kind == "SaveImageWebsocket":
            images = inputs["images"]
            for index, image in enumerate(images):
                states[node_id] = self._node_state(prompt, node_id, index, len(images), "running")
                self._emit(prompt, "progress_state", {"prompt_id": prompt.prompt_id, "nodes": copy.deepcopy(states)})
                self._emit(prompt, "progress", {"value": index, "max": len(images), "prompt_id": prompt.prompt_id, "node": node_id})
                png = BytesIO()
                image.save(png, format="PNG")
                # Binary event 1 (PREVIEW_IMAGE), then the image format (2 = PNG), then the image (03b).
                self._emit(prompt, "binary", struct.pack(">II", 1, 2) + png.getvalue())
            states[node_id] = self._node_state(prompt, node_id, len(images), len(images), "finished")
            self._emit(prompt, "progress_state", {"prompt_id": prompt.prompt_id, "nodes": copy.deepcopy(states)})
            return [], None
        # A class the double knows but gives no behaviour: its first image input goes through.
        for value in inputs.values():
            if isinstance(value, list) and value and isinstance(value[0], Image.Image):
                return value, None
        return [], None

    def _save(self, images, prefix: str, folder: Path, folder_type: str) -> list:
        """Save PNGs as SaveImage does; answer their references."""
        full, name, counter, subfolder = self._save_path(prefix, folder)
        refs = []
        for image in images:
            filename = f"{name}_{counter:05}_.png"
            image.save(full / filename)
            refs.append({"filename": filename, "subfolder": subfolder, "type": folder_type})
            counter += 1
        return refs

    def _save_path(self, prefix: str, folder: Path):
        """ComfyUI's get_save_image_path: the folder, the name, the next counter and the subfolder."""
        subfolder = os.path.dirname(os.path.normpath(prefix))
        name = os.path.basename(os.path.normpath(prefix))
        full = Path(os.path.abspath(os.path.join(folder, subfolder)))
        common = os.path.commonpath((str(folder), str(full)))
        if common != str(folder):
            message = recorded_frame("execution_error", "05_errors.json")["exception_message"]
            message = re.sub(r"full_output_folder: .*", f"full_output_folder: {full}", message)
            message = re.sub(r"output_dir: .*", f"output_dir: {folder}", message)
            message = re.sub(r"commonpath: .*", f"commonpath: {common}", message)
            raise _NodeFailure("Exception", message)
        full.mkdir(parents=True, exist_ok=True)
        pattern = re.compile(re.escape(name) + r"_(\d{5})_")
        counters = [int(match.group(1)) for match in map(pattern.match, os.listdir(full)) if match]
        return full, name, max(counters, default=0) + 1, subfolder
