"""Workflow definitions: manifests, parameter validation, seeds, and graph assembly (scenes).

A workflow is a folder holding ``manifest.json`` (id, name, description, type, declared inputs) and
``graph.json`` (a ComfyUI API-format graph). Each input maps to one or more node inputs of the graph;
a ``scenes`` input names the block of nodes that is repeated once per scene. No Flask import.

Manifest input fields:
  id, type (text|int|float|seed|select|boolean|image|scenes), label, default, required,
  min, max (numbers), max_length (text), options (select),
  maps_to: [node_id, input_name], a list of those, or objects {"node", "input", "transform"}
  where transform is "color" (a seed or number to a 0xRRGGBB colour) or "frames" (seconds times "fps").
A scenes input also has: fields (the per-scene inputs, same format), min_items, max_items,
  block (node ids of one scene in graph.json), output ([node_id, index] of the block's image),
  target ([node_id, input_name] fed by all scenes joined in order with ImageBatch).
"""
from __future__ import annotations

import copy
import io
import json
import logging
import math
import secrets
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path

from PIL import Image
from PIL import UnidentifiedImageError

from history import text
from history.files import STUDIO_FOLDER
from history.jobs import WORKFLOW_ID_PATTERN

log = logging.getLogger(__name__)

INPUT_TYPES = ("text", "int", "float", "seed", "select", "boolean", "image", "scenes")
WORKFLOW_TYPES = ("static", "dynamic")
SAVE_NODES = ("SaveImage", "SaveAnimatedWEBP", "SaveAnimatedPNG", "SaveWEBM", "SaveVideo", "SaveImageWebsocket")
TRANSFORMS = ("color", "frames")
SEED_MAX = 2**53 - 1  # what a browser's JSON numbers hold exactly
RANDOM_SEED_MAX = 2**32 - 1
DEFAULT_TEXT_LENGTH = 10_000

# Uploaded input images: formats Pillow reads that ComfyUI's LoadImage reads too, and their limits.
UPLOAD_FORMATS = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp", "GIF": "gif", "BMP": "bmp"}
MAX_UPLOAD_BYTES = 25 * 1024 * 1024
MAX_UPLOAD_SIDE = 8192
MAX_UPLOAD_PIXELS = 40_000_000


class WorkflowError(ValueError):
    """A workflow folder that cannot be loaded; the message says what is wrong."""


class ValidationError(ValueError):
    """A parameter that does not fit its workflow; ``field`` names it (``seed``, ``scenes[1].duration``)."""

    def __init__(self, field_name: str, message: str):
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.message = message


@dataclass
class Workflow:
    """One workflow: its manifest and graph."""

    id: str
    name: str
    description: str
    type: str
    inputs: list[dict]
    graph: dict
    folder: Path | None = None
    extra: dict = field(default_factory=dict)

    def input(self, input_id: str) -> dict | None:
        """The declared input with this id, or None."""
        return next((spec for spec in self.inputs if spec["id"] == input_id), None)

    @property
    def image_input(self) -> dict | None:
        """The input of type image, if the workflow takes one."""
        return next((spec for spec in self.inputs if spec["type"] == "image"), None)

    def to_dict(self) -> dict:
        """The workflow as GET /api/workflows lists it."""
        return {
            "id": self.id,
            "name": self.name,
            "type": self.type,
            "description": self.description,
            "inputs": copy.deepcopy(self.inputs),
        }


# ---- loading ------------------------------------------------------------------------------------

def _targets(spec: dict, graph: dict, where: str) -> list[dict]:
    """Normalise an input's maps_to into [{"node", "input", "transform"}] and check each node exists."""
    raw = spec.get("maps_to", [])
    if raw in (None, []):
        return []
    if isinstance(raw, list) and len(raw) == 2 and all(isinstance(part, str) for part in raw):
        raw = [raw]
    if not isinstance(raw, list):
        raise WorkflowError(f"{where}: maps_to must be [node_id, input_name] or a list of them")
    targets = []
    for item in raw:
        if isinstance(item, list) and len(item) == 2 and all(isinstance(part, str) for part in item):
            target = {"node": item[0], "input": item[1]}
        elif isinstance(item, dict) and isinstance(item.get("node"), str) and isinstance(item.get("input"), str):
            target = {key: item[key] for key in ("node", "input", "transform", "fps") if key in item}
        else:
            raise WorkflowError(f"{where}: maps_to entries must be [node_id, input_name]")
        if target["node"] not in graph:
            raise WorkflowError(f"{where}: maps_to names node {target['node']!r}, which graph.json lacks")
        if target.get("transform") not in (None, *TRANSFORMS):
            raise WorkflowError(f"{where}: unknown transform {target['transform']!r}")
        targets.append(target)
    return targets


def _check_input(spec, graph: dict, where: str, allow_scenes: bool = True) -> dict:
    """Check one input of a manifest against its graph and return it with its label and targets."""
    if not isinstance(spec, dict) or not isinstance(spec.get("id"), str) or not spec["id"]:
        raise WorkflowError(f"{where}: every input needs an id")
    where = f"{where} {spec['id']!r}"
    if spec.get("type") not in INPUT_TYPES or (spec["type"] == "scenes" and not allow_scenes):
        raise WorkflowError(f"{where}: type must be one of {', '.join(INPUT_TYPES)}")
    checked = dict(spec)
    checked.setdefault("label", spec["id"].replace("_", " ").capitalize())
    checked["maps_to"] = _targets(spec, graph, where)
    if spec["type"] == "select" and not (isinstance(spec.get("options"), list) and spec["options"]):
        raise WorkflowError(f"{where}: a select input needs options")
    if spec["type"] == "scenes":
        _check_scenes_input(spec, checked, graph, where)
    elif spec["type"] != "image" and "default" in spec:
        # A bad default is the workflow author's mistake: report it at start-up, not on every run.
        try:
            _coerce(checked, spec["default"], where)
        except ValidationError as error:
            raise WorkflowError(f"{where}: default {error.message}") from None
    return checked


def _check_scenes_input(spec: dict, checked: dict, graph: dict, where: str) -> None:
    """Check a scenes input: its fields, the block of nodes repeated per scene, and its output and target."""
    fields = spec.get("fields")
    if not isinstance(fields, list) or not fields:
        raise WorkflowError(f"{where}: a scenes input needs fields")
    checked["fields"] = [_check_input(item, graph, f"{where} field", allow_scenes=False) for item in fields]
    block = spec.get("block")
    if not isinstance(block, list) or not block or any(node not in graph for node in block):
        raise WorkflowError(f"{where}: block must list node ids of graph.json")
    for name in ("output", "target"):
        value = spec.get(name)
        if not (isinstance(value, list) and len(value) == 2 and value[0] in graph):
            raise WorkflowError(f"{where}: {name} must be [node_id, ...] of graph.json")
    if spec["output"][0] not in block:
        raise WorkflowError(f"{where}: output must be a node of the block")
    checked.setdefault("min_items", 1)
    checked.setdefault("max_items", 16)


def _read_json(folder: Path, name: str):
    """A JSON file of a workflow folder; raise WorkflowError."""
    try:
        return json.loads((folder / name).read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise WorkflowError(f"{folder.name}: {Path(error.filename).name} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise WorkflowError(f"{folder.name}: {error}") from None


def _check_graph_nodes(folder: Path, graph) -> None:
    """A ComfyUI API-format graph: an object of nodes, each with a class_type and inputs."""
    if not isinstance(graph, dict) or not graph:
        raise WorkflowError(f"{folder.name}: graph.json must be a ComfyUI API-format object")
    for node_id, node in graph.items():
        if not isinstance(node, dict) or not isinstance(node.get("class_type"), str) or not isinstance(node.get("inputs", {}), dict):
            raise WorkflowError(f"{folder.name}: graph node {node_id!r} needs a class_type and inputs")


def _check_output_node(folder: Path, graph: dict) -> None:
    """A graph saves (or previews) at least one output."""
    if not any(node["class_type"] in SAVE_NODES or node["class_type"] == "PreviewImage" for node in graph.values()):
        raise WorkflowError(f"{folder.name}: graph.json has no output node (SaveImage, SaveAnimatedWEBP, ...)")


def _manifest_id_and_type(folder: Path, manifest: dict) -> tuple[str, str]:
    """The manifest's id and type (static or dynamic); raise WorkflowError."""
    workflow_id = manifest.get("id")
    if not isinstance(workflow_id, str) or not workflow_id:
        raise WorkflowError(f"{folder.name}: manifest.json needs an id")
    if not WORKFLOW_ID_PATTERN.match(workflow_id):
        raise WorkflowError(f"{folder.name}: id {workflow_id!r} must be letters, digits, '_', '-' and '.'")
    kind = manifest.get("type", "static")
    if kind not in WORKFLOW_TYPES:
        raise WorkflowError(f"{folder.name}: type must be static or dynamic")
    return workflow_id, kind


def _manifest_inputs(folder: Path, manifest: dict, graph: dict, kind: str) -> list[dict]:
    """The manifest's inputs, each checked, with unique ids, at most one image and scenes only when dynamic."""
    inputs = manifest.get("inputs", [])
    if not isinstance(inputs, list):
        raise WorkflowError(f"{folder.name}: inputs must be a list")
    checked = [_check_input(spec, graph, f"{folder.name}: input") for spec in inputs]
    ids = [spec["id"] for spec in checked]
    if len(set(ids)) != len(ids):
        raise WorkflowError(f"{folder.name}: input ids repeat")
    if sum(spec["type"] == "image" for spec in checked) > 1:
        raise WorkflowError(f"{folder.name}: at most one image input")
    if (kind == "dynamic") != any(spec["type"] == "scenes" for spec in checked):
        raise WorkflowError(f"{folder.name}: a dynamic workflow has one scenes input, a static one none")
    return checked


def load_workflow(folder: Path) -> Workflow:
    """Load one workflow folder; raise WorkflowError."""
    manifest = _read_json(folder, "manifest.json")
    graph = _read_json(folder, "graph.json")
    if not isinstance(manifest, dict):
        raise WorkflowError(f"{folder.name}: manifest.json must be an object")
    _check_graph_nodes(folder, graph)
    workflow_id, kind = _manifest_id_and_type(folder, manifest)
    checked = _manifest_inputs(folder, manifest, graph, kind)
    _check_output_node(folder, graph)
    return Workflow(
        id=workflow_id,
        name=str(manifest.get("name") or workflow_id),
        description=str(manifest.get("description") or ""),
        type=kind,
        inputs=checked,
        graph=graph,
        folder=folder,
    )


def load_workflows(directory: Path) -> tuple[dict[str, Workflow], list[str]]:
    """Load every workflow folder under ``directory``; a malformed one is logged and skipped."""
    workflows: dict[str, Workflow] = {}
    errors: list[str] = []
    directory = Path(directory)
    if not directory.is_dir():
        errors.append(f"workflows folder {directory} does not exist")
        log.warning("workflows folder %s does not exist", directory)
        return workflows, errors
    for folder in sorted(directory.iterdir()):
        if not folder.is_dir() or folder.name.startswith((".", "_")):
            continue
        try:
            workflow = load_workflow(folder)
        except WorkflowError as error:
            errors.append(str(error))
            log.error("skipping workflow folder %s", error)
            continue
        if workflow.id in workflows:
            message = f"{folder.name}: id {workflow.id!r} is already used by {workflows[workflow.id].folder.name}"
            errors.append(message)
            log.error("skipping workflow folder %s", message)
            continue
        workflows[workflow.id] = workflow
    return workflows, errors


# ---- validation ---------------------------------------------------------------------------------

def _coerce_text(spec: dict, value, name: str) -> str:
    """Valid Unicode text up to the input's max_length, without NUL."""
    if not isinstance(value, str):
        raise ValidationError(name, "must be text")
    limit = int(spec.get("max_length", DEFAULT_TEXT_LENGTH))
    if len(value) > limit:
        raise ValidationError(name, f"must be at most {limit} characters")
    if "\x00" in value:
        raise ValidationError(name, "contains a NUL character")
    if not text.is_valid(value):
        raise ValidationError(name, "is not valid Unicode text (it holds a lone surrogate); send UTF-8")
    return value


def _coerce_boolean(spec: dict, value, name: str) -> bool:
    """true or false."""
    if not isinstance(value, bool):
        raise ValidationError(name, "must be true or false")
    return value


def _coerce_select(spec: dict, value, name: str):
    """One of the input's options."""
    if value not in spec["options"]:
        raise ValidationError(name, f"must be one of {', '.join(map(str, spec['options']))}")
    return value


def _whole_number(value, name: str) -> int:
    """An integer (a float without a fraction counts), never a bool."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(name, "must be a whole number")
    return value


def _coerce_seed(spec: dict, value, name: str) -> int:
    """-1 (random) or a seed from 0 to the input's max."""
    value = _whole_number(value, name)
    if value != -1 and not 0 <= value <= int(spec.get("max", SEED_MAX)):
        raise ValidationError(name, f"must be -1 (random) or from 0 to {int(spec.get('max', SEED_MAX))}")
    return value


def _in_range(spec: dict, value, name: str):
    """The value, when within the input's min and max."""
    if "min" in spec and value < spec["min"]:
        raise ValidationError(name, f"must be at least {spec['min']}")
    if "max" in spec and value > spec["max"]:
        raise ValidationError(name, f"must be at most {spec['max']}")
    return value


def _coerce_int(spec: dict, value, name: str) -> int:
    """A whole number within the input's range."""
    return _in_range(spec, _whole_number(value, name), name)


def _coerce_float(spec: dict, value, name: str) -> float:
    """A finite number within the input's range."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValidationError(name, "must be a number")
    return _in_range(spec, float(value), name)


# How each input type checks a value (image and scenes inputs are not given as plain parameters).
COERCERS = {
    "text": _coerce_text,
    "boolean": _coerce_boolean,
    "select": _coerce_select,
    "seed": _coerce_seed,
    "int": _coerce_int,
    "float": _coerce_float,
}


def _coerce(spec: dict, value, name: str):
    """Check one value against its input spec and return it cleaned; raise ValidationError."""
    coerce = COERCERS.get(spec["type"])
    if coerce is None:
        raise ValidationError(name, f"cannot be given as a parameter ({spec['type']})")
    return coerce(spec, value, name)


def random_seed() -> int:
    """A fresh seed, as a -1 seed becomes."""
    return secrets.randbelow(RANDOM_SEED_MAX + 1)


def _resolve_seed(value: int, previous) -> int:
    if value != -1:
        return value
    if isinstance(previous, int) and not isinstance(previous, bool) and previous >= 0:
        return previous
    return random_seed()


def _validate_scenes(spec: dict, value, previous_seeds) -> tuple[list[dict], list]:
    name = spec["id"]
    if not isinstance(value, list):
        raise ValidationError(name, "must be a list of scenes")
    if not spec["min_items"] <= len(value) <= spec["max_items"]:
        raise ValidationError(name, f"must hold from {spec['min_items']} to {spec['max_items']} scenes")
    known = {item["id"]: item for item in spec["fields"]}
    scenes, seeds = [], []
    for index, scene in enumerate(value):
        where = f"{name}[{index}]"
        if not isinstance(scene, dict):
            raise ValidationError(where, "must be an object")
        unknown = sorted(set(scene) - set(known))
        if unknown:
            raise ValidationError(f"{where}.{unknown[0]}", "is not a field of a scene")
        clean = {}
        scene_seed = None
        for item in spec["fields"]:
            field_name = f"{where}.{item['id']}"
            if item["id"] in scene:
                clean[item["id"]] = _coerce(item, scene[item["id"]], field_name)
            elif "default" in item:
                clean[item["id"]] = copy.deepcopy(item["default"])
            else:
                raise ValidationError(field_name, "is required")
            if item["type"] == "seed":
                previous = previous_seeds[index] if isinstance(previous_seeds, list) and index < len(previous_seeds) else None
                scene_seed = _resolve_seed(clean[item["id"]], previous)
        scenes.append(clean)
        seeds.append(scene_seed)
    return scenes, seeds


def validate_params(workflow: Workflow, params, input_image: str | None = None, previous_seeds: dict | None = None) -> tuple[dict, dict]:
    """Check params against the workflow's inputs; return (clean params, resolved seeds).

    Unknown keys are refused, missing ones take their default, and a ``-1`` seed becomes a random one
    (or, for a retry, the seed the original job used: ``previous_seeds``). Raise ValidationError naming
    the field.
    """
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise ValidationError("params", "must be a JSON object")
    previous_seeds = previous_seeds if isinstance(previous_seeds, dict) else {}
    declared = {spec["id"]: spec for spec in workflow.inputs if spec["type"] != "image"}
    unknown = sorted(set(params) - set(declared))
    if unknown:
        raise ValidationError(unknown[0], f"is not an input of {workflow.id}")
    clean: dict = {}
    seeds: dict = {}
    for spec in workflow.inputs:
        name = spec["id"]
        if spec["type"] == "image":
            if input_image is None and spec.get("required", True):
                raise ValidationError(name, "an input image is required")
            continue
        if name in params:
            value = params[name]
        elif "default" in spec:
            value = copy.deepcopy(spec["default"])
        else:
            raise ValidationError(name, "is required")
        if spec["type"] == "scenes":
            clean[name], seeds[name] = _validate_scenes(spec, value, previous_seeds.get(name))
            continue
        clean[name] = _coerce(spec, value, name)
        if spec["type"] == "seed":
            seeds[name] = _resolve_seed(clean[name], previous_seeds.get(name))
    if input_image is not None and workflow.image_input is None:
        raise ValidationError("input_image", f"{workflow.id} takes no input image")
    return clean, seeds


# ---- retrying a recorded job --------------------------------------------------------------------

@dataclass
class RetryPlan:
    """What a Retry of a recorded job would run: the parameters the workflow takes now, and what changed.

    ``notes`` say, in the user's words, what was mapped or left out (an imported job's ``input_image``
    inside its params, a field the workflow no longer declares, a value that no longer fits); ``reason``
    is set when the job cannot be retried at all (its workflow is not installed).
    """

    params: dict = field(default_factory=dict)
    input_image: str | None = None
    notes: list[str] = field(default_factory=list)
    reason: str | None = None

    @property
    def available(self) -> bool:
        """Whether Retry can run this job."""
        return self.reason is None


WORKFLOW_NOT_INSTALLED = "workflow not installed"


def _fit_value(spec: dict, value, name: str, notes: list[str]):
    """A recorded value as the input takes it now: itself when it fits, else the default (noted), else raise."""
    try:
        return _coerce(spec, value, name)
    except ValidationError as error:
        if "default" not in spec:
            raise
        notes.append(f"takes the default {spec['default']!r} for {name} ({error.message})")
        return copy.deepcopy(spec["default"])


def _fit_scenes(spec: dict, scenes, notes: list[str]):
    """Recorded scenes with the fields a scene no longer has left out (noted once per field)."""
    if not isinstance(scenes, list):
        return scenes
    known = {item["id"]: item for item in spec["fields"]}
    dropped: list[str] = []
    fitted = []
    for index, scene in enumerate(scenes):
        if not isinstance(scene, dict):
            fitted.append(scene)
            continue
        kept = {}
        for key, value in scene.items():
            if key not in known:
                if key not in dropped:
                    dropped.append(key)
                continue
            kept[key] = _fit_value(known[key], value, f"{spec['id']}[{index}].{key}", notes) if value is not None else value
        fitted.append(kept)
    for key in dropped:
        notes.append(f"leaves out {spec['id']}[].{key} (not a field of a scene now)")
    return fitted


def plan_retry(workflow: Workflow | None, params, input_image: str | None) -> RetryPlan:
    """Fit a recorded job's params and input image to its workflow as installed now; say what changed.

    A job recorded elsewhere (imported, or run before the workflow changed) may carry its input image
    inside ``params`` or fields the workflow no longer declares: the image is taken from there, unknown
    fields are left out, and a value that no longer fits takes the input's default. Nothing here raises
    for a recorded value that can be fitted; a required input with no value and no default still fails
    validation when the retry runs.
    """
    if workflow is None:
        return RetryPlan(reason=WORKFLOW_NOT_INSTALLED, input_image=input_image)
    notes: list[str] = []
    recorded = params if isinstance(params, dict) else {}
    image_spec = workflow.image_input
    image_keys = {"input_image"} | ({image_spec["id"]} if image_spec else set())
    clean: dict = {}
    # Sorted: PostgreSQL's JSONB does not keep key order, and the notes read the same on every store.
    for key, value in sorted(recorded.items()):
        if key in image_keys:
            if image_spec is not None and input_image is None and isinstance(value, str) and value:
                input_image = value
                notes.append(f"takes the input image {value} from the parameters")
            elif image_spec is None:
                notes.append(f"leaves out {key} ({workflow.id} takes no input image now)")
            continue
        spec = workflow.input(key)
        if spec is None:
            notes.append(f"leaves out {key} (not an input of {workflow.id} now)")
            continue
        if spec["type"] == "scenes":
            clean[key] = _fit_scenes(spec, value, notes)
        elif value is None and "default" in spec:
            clean[key] = copy.deepcopy(spec["default"])
        else:
            try:
                clean[key] = _fit_value(spec, value, key, notes)
            except ValidationError:
                clean[key] = value  # no default to fall back on: validation names the field
    if input_image is not None and image_spec is None:
        notes.append(f"leaves out the input image {input_image} ({workflow.id} takes none now)")
        input_image = None
    return RetryPlan(params=clean, input_image=input_image, notes=notes)


# ---- graph assembly -----------------------------------------------------------------------------

def seed_color(value: int) -> int:
    """A seed as a 0xRRGGBB colour: neighbouring seeds get clearly different colours."""
    mixed = (int(value) * 2654435761) & 0xFFFFFFFF  # Knuth's multiplicative hash
    return (mixed ^ (mixed >> 8)) & 0xFFFFFF


def _transformed(target: dict, value):
    transform = target.get("transform")
    if transform == "color":
        return seed_color(value)
    if transform == "frames":
        return max(1, int(round(float(value) * float(target.get("fps", 8)))))
    return value


def _apply(graph: dict, targets: list[dict], value, renamed: dict | None = None) -> None:
    for target in targets:
        node_id = (renamed or {}).get(target["node"], target["node"])
        graph[node_id].setdefault("inputs", {})[target["input"]] = _transformed(target, value)


def _next_id(graph: dict) -> int:
    numbers = [int(node_id) for node_id in graph if str(node_id).isdigit()]
    return max(numbers, default=0) + 1


def _assemble_scenes(graph: dict, spec: dict, scenes: list[dict], seeds: list) -> None:
    """Repeat the scene block once per scene and join the scenes' images, in order, into the target."""
    block = spec["block"]
    template = {node_id: copy.deepcopy(graph[node_id]) for node_id in block}
    outputs = []
    for index, scene in enumerate(scenes):
        if index == 0:
            renamed = {node_id: node_id for node_id in block}
        else:
            renamed = {}
            for node_id in block:
                renamed[node_id] = str(_next_id(graph) + len(renamed))
            for node_id in block:
                node = copy.deepcopy(template[node_id])
                for key, link in node.get("inputs", {}).items():
                    if isinstance(link, list) and len(link) == 2 and link[0] in renamed:
                        node["inputs"][key] = [renamed[link[0]], link[1]]
                graph[renamed[node_id]] = node
        for item in spec["fields"]:
            value = seeds[index] if item["type"] == "seed" else scene[item["id"]]
            _apply(graph, item["maps_to"], value, renamed)
        outputs.append([renamed[spec["output"][0]], spec["output"][1]])
    joined = outputs[0]
    for later in outputs[1:]:
        node_id = str(_next_id(graph))
        graph[node_id] = {"class_type": "ImageBatch", "inputs": {"image1": joined, "image2": later}}
        joined = [node_id, 0]
    target_node, target_input = spec["target"]
    graph[target_node]["inputs"][target_input] = joined


def save_prefix(output_dir: str, node: dict) -> str:
    """The filename_prefix that puts a save node's files under comfyui-studio/<output_dir>/."""
    current = str(node.get("inputs", {}).get("filename_prefix") or "ComfyUI")
    name = current.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1] or "ComfyUI"
    if name in (".", ".."):
        name = "ComfyUI"
    return f"{STUDIO_FOLDER}/{output_dir}/{name}"


def build_graph(workflow: Workflow, params: dict, seeds: dict, output_dir: str, input_image: str | None = None) -> dict:
    """The graph to run: validated params (and resolved seeds) written into the nodes they map to,
    scenes assembled, and every save node's filename_prefix under ``comfyui-studio/<output_dir>/``."""
    graph = copy.deepcopy(workflow.graph)
    # Plain inputs first, so a value mapped into the scene block reaches every copy of it.
    for spec in workflow.inputs:
        name = spec["id"]
        if spec["type"] == "image":
            if input_image is not None:
                _apply(graph, spec["maps_to"], input_image)
        elif spec["type"] != "scenes":
            _apply(graph, spec["maps_to"], seeds[name] if spec["type"] == "seed" else params[name])
    for spec in workflow.inputs:
        if spec["type"] == "scenes":
            _assemble_scenes(graph, spec, params[spec["id"]], seeds[spec["id"]])
    for node in graph.values():
        if node["class_type"] in SAVE_NODES:
            node.setdefault("inputs", {})["filename_prefix"] = save_prefix(output_dir, node)
    return graph


# ---- uploaded input images ----------------------------------------------------------------------

def check_upload(data: bytes) -> str:
    """Check an uploaded image with Pillow (format, bytes, sides, pixels); return its file extension.

    Raise ValidationError("input_image", ...) when it is not an image the workflows can read.
    """
    if len(data) > MAX_UPLOAD_BYTES:
        raise ValidationError("input_image", f"is larger than {MAX_UPLOAD_BYTES // (1024 * 1024)} MB")
    if not data:
        raise ValidationError("input_image", "is empty")
    try:
        with Image.open(io.BytesIO(data)) as image:
            image_format = image.format
            width, height = image.size
            if image_format not in UPLOAD_FORMATS:
                raise ValidationError("input_image", f"must be {', '.join(UPLOAD_FORMATS)}; got {image_format}")
            if width > MAX_UPLOAD_SIDE or height > MAX_UPLOAD_SIDE or width * height > MAX_UPLOAD_PIXELS:
                raise ValidationError(
                    "input_image",
                    f"is {width}x{height}; at most {MAX_UPLOAD_SIDE} pixels a side and {MAX_UPLOAD_PIXELS:,} pixels",
                )
            image.verify()
    except ValidationError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError):
        raise ValidationError("input_image", "is not an image Pillow can read") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ValidationError("input_image", f"is a damaged image ({error})") from None
    return UPLOAD_FORMATS[image_format]
