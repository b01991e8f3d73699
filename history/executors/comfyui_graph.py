"""What a ComfyUI prompt says in the studio's words: its parameters, its workflow's name, its record.

Prompts another client queued (ComfyUI's own page, a script) carry no manifest, so their parameters are
read from the API-format graph itself: the text of the CLIPTextEncode nodes wired to a sampler's
``positive`` and ``negative`` inputs, the sampler's seed, steps, cfg, sampler and scheduler, the
checkpoint, the latent size and batch. What is not there is left out; a graph with none of it still
gets its node types counted. Shapes follow ``tests/comfyui_transcripts/09_other_clients.json``.
No Flask and no database here.
"""
from __future__ import annotations

import collections
import datetime

COMFYUI_WORKFLOW_ID = "comfyui"
DEFAULT_NAME = "ComfyUI"
# Sampler inputs copied into params as they are (KSampler, KSamplerAdvanced, SamplerCustom...).
SAMPLER_KEYS = ("steps", "cfg", "sampler_name", "scheduler", "denoise")
SEED_KEYS = ("seed", "noise_seed")
CHECKPOINT_KEYS = ("ckpt_name", "unet_name", "model_name")
SIZE_KEYS = ("width", "height", "batch_size")
MAX_TEXT = 20_000


def _link(value) -> str | None:
    """The node id a link [node_id, slot] points at, else None."""
    if isinstance(value, list) and len(value) == 2 and isinstance(value[0], (str, int)) and isinstance(value[1], int):
        return str(value[0])
    return None


def _nodes(graph) -> dict:
    """The graph's nodes that are well-formed objects with a class_type."""
    if not isinstance(graph, dict):
        return {}
    return {str(node_id): node for node_id, node in graph.items()
            if isinstance(node, dict) and isinstance(node.get("class_type"), str) and isinstance(node.get("inputs", {}), dict)}


def _is_sampler(node: dict) -> bool:
    inputs = node.get("inputs") or {}
    return "positive" in inputs and "negative" in inputs


def _prompt_text(nodes: dict, node_id: str | None, seen: set | None = None) -> str | None:
    """The text a conditioning input comes from: the CLIPTextEncode it leads to (through conditioning nodes)."""
    seen = seen if seen is not None else set()
    if node_id is None or node_id in seen or node_id not in nodes:
        return None
    seen.add(node_id)
    node = nodes[node_id]
    inputs = node.get("inputs") or {}
    for key in ("text", "text_g", "prompt"):
        value = inputs.get(key)
        if isinstance(value, str):
            return value[:MAX_TEXT]
        linked = _link(value)
        if linked in nodes:  # a text primitive feeding the encoder
            for inner in ("value", "text", "string"):
                if isinstance(nodes[linked].get("inputs", {}).get(inner), str):
                    return nodes[linked]["inputs"][inner][:MAX_TEXT]
    # A conditioning node in between (ConditioningCombine, ControlNetApply...): follow its first conditioning link.
    for key in ("conditioning", "conditioning_1", "conditioning_to", "positive", "negative"):
        text = _prompt_text(nodes, _link(inputs.get(key)), seen)
        if text is not None:
            return text
    return None


def _literal(value):
    """A plain value (not a link) as params may hold it."""
    if _link(value) is not None or isinstance(value, (dict, list)):
        return None
    return value


def read_params(graph) -> tuple[dict, dict]:
    """(params, seeds) read from an API-format graph, in the studio's parameter names."""
    nodes = _nodes(graph)
    params: dict = {}
    seeds: dict = {}
    samplers = sorted((node_id for node_id, node in nodes.items() if _is_sampler(node)), key=_order)
    for index, node_id in enumerate(samplers):
        _read_sampler(nodes, node_id, index, params, seeds)
    _read_checkpoint(nodes, params)
    if "width" not in params:
        for node_id in sorted(nodes, key=_order):
            if _read_size(nodes[node_id], params):
                break
    if not params:
        counted = collections.Counter(node["class_type"] for node in nodes.values())
        params["nodes"] = dict(sorted(counted.items()))
    return params, seeds


def _read_sampler(nodes: dict, node_id: str, index: int, params: dict, seeds: dict) -> None:
    """A sampler's prompts, seed, settings and latent size (the second sampler's names end in _2, and so on)."""
    inputs = nodes[node_id]["inputs"]
    suffix = "" if index == 0 else f"_{index + 1}"
    for name, key in (("positive_prompt", "positive"), ("negative_prompt", "negative")):
        text = _prompt_text(nodes, _link(inputs.get(key)))
        if text is not None and name + suffix not in params:
            params[name + suffix] = text
    for key in SEED_KEYS:
        value = _literal(inputs.get(key))
        if isinstance(value, int) and not isinstance(value, bool):
            seeds[("seed" if index == 0 else f"seed_{node_id}")] = value
            params.setdefault("seed" + suffix, value)
            break
    for key in SAMPLER_KEYS:
        value = _literal(inputs.get(key))
        if value is not None:
            params.setdefault(key + suffix, value)
    latent = nodes.get(_link(inputs.get("latent_image")) or "")
    if latent is not None:
        _read_size(latent, params)


def _read_checkpoint(nodes: dict, params: dict) -> None:
    """The first checkpoint name a loader node names."""
    for node_id in sorted(nodes, key=_order):
        inputs = nodes[node_id].get("inputs") or {}
        for key in CHECKPOINT_KEYS:
            value = _literal(inputs.get(key))
            if isinstance(value, str) and "checkpoint" not in params:
                params["checkpoint"] = value


def _read_size(node: dict, params: dict) -> bool:
    """Copy width, height and batch size from a node that has width and height as plain numbers."""
    inputs = node.get("inputs") or {}
    width, height = _literal(inputs.get("width")), _literal(inputs.get("height"))
    if not (isinstance(width, int) and isinstance(height, int)):
        return False
    params.setdefault("width", width)
    params.setdefault("height", height)
    batch = _literal(inputs.get("batch_size"))
    if isinstance(batch, int):
        params.setdefault("batch_size", batch)
    return True


def _order(node_id: str) -> tuple:
    return (0, int(node_id), "") if str(node_id).isdigit() else (1, 0, str(node_id))


def ui_workflow(extra_data) -> dict | None:
    """The UI workflow ComfyUI's page embedded in a prompt (``extra_pnginfo.workflow``), if any."""
    if not isinstance(extra_data, dict):
        return None
    pnginfo = extra_data.get("extra_pnginfo")
    workflow = pnginfo.get("workflow") if isinstance(pnginfo, dict) else None
    return workflow if isinstance(workflow, dict) and workflow else None


def workflow_name(graph, extra_data, output_nodes) -> str:
    """A display name: the UI workflow's own name, else the title of its first output node, else "ComfyUI"."""
    workflow = ui_workflow(extra_data)
    if workflow is None:
        return DEFAULT_NAME
    for holder in (workflow, workflow.get("extra") if isinstance(workflow.get("extra"), dict) else {}):
        name = holder.get("name") or holder.get("title")
        if isinstance(name, str) and name.strip():
            return name.strip()[:200]
    titles = {}
    for node in workflow.get("nodes") or []:
        if isinstance(node, dict) and isinstance(node.get("title"), str) and node["title"].strip():
            titles[str(node.get("id"))] = node["title"].strip()
    nodes = _nodes(graph)
    for node_id in sorted((str(node) for node in output_nodes or []), key=_order):
        if node_id in titles:
            return titles[node_id][:200]
        meta = (nodes.get(node_id) or {}).get("_meta")
        if isinstance(meta, dict) and isinstance(meta.get("title"), str) and meta["title"].strip():
            return meta["title"].strip()[:200]
    return DEFAULT_NAME


def queued_by(extra_data) -> str:
    """Who queued a prompt, as far as ComfyUI can tell: its own page (a UI workflow came along) or a script."""
    if ui_workflow(extra_data) is not None:
        return "ComfyUI's page"
    if isinstance(extra_data, dict) and extra_data.get("client_id"):
        return "another client"
    return "a script"


def source(extra_data, server: str) -> str:
    """Where a prompt came from, as a card and the overlay say it."""
    return f"{queued_by(extra_data)} on {server}"


def observed_record(entry, server: str, seen_at: datetime.datetime | None = None) -> dict | None:
    """The studio's record of a /queue or /history entry ``[number, prompt_id, graph, extra_data, outputs]``.

    Without a status: the caller sets it. ``queued_at`` is when the studio first saw it (ComfyUI keeps
    no queue time), else its execution start.
    """
    if not isinstance(entry, (list, tuple)) or len(entry) < 3 or not isinstance(entry[1], str):
        return None
    graph = entry[2] if isinstance(entry[2], dict) else {}
    extra_data = entry[3] if len(entry) > 3 and isinstance(entry[3], dict) else {}
    output_nodes = entry[4] if len(entry) > 4 and isinstance(entry[4], list) else []
    params, seeds = read_params(graph)
    return {
        "prompt_id": entry[1],
        "workflow_id": COMFYUI_WORKFLOW_ID,
        "workflow_name": workflow_name(graph, extra_data, output_nodes),
        "queued_at": seen_at,
        "params": params,
        "seeds": seeds,
        "source": source(extra_data, server),
        "comfyui_server": server,
        "graph": graph,
        "ui_workflow": ui_workflow(extra_data),
    }
