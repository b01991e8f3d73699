"""Workflow folders: the shipped examples, malformed folders, parameter validation, seeds, graph assembly."""
from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from history.config import PACKAGE_DIR
from history.workflows import ValidationError
from history.workflows import build_graph
from history.workflows import check_upload
from history.workflows import load_workflows
from history.workflows import seed_color
from history.workflows import validate_params

EXAMPLES = PACKAGE_DIR / "workflows"
EXAMPLE_IDS = ["img2vid-example", "scenes-example", "txt2img-example", "upscale-fails-example"]
OUTPUT_DIR = "20261128_153012_a1b2c3"


@pytest.fixture(scope="module")
def examples():
    workflows, errors = load_workflows(EXAMPLES)
    assert errors == []
    return workflows


def test_examples_load_and_say_they_are_examples(examples):
    assert sorted(examples) == EXAMPLE_IDS
    for workflow in examples.values():
        assert "(example" in workflow.name
        assert workflow.description


def test_api_lists_workflows(client):
    response = client.get("/api/workflows")
    assert response.status_code == 200
    listed = {item["id"]: item for item in response.json}
    assert sorted(listed) == EXAMPLE_IDS
    txt2img = listed["txt2img-example"]
    assert set(txt2img) == {"id", "name", "type", "description", "inputs"}
    assert txt2img["type"] == "static" and listed["scenes-example"]["type"] == "dynamic"
    assert [item["id"] for item in txt2img["inputs"]] == [
        "positive_prompt", "negative_prompt", "seed", "width", "height", "batch_size",
    ]
    assert {item["type"] for item in listed["img2vid-example"]["inputs"]} >= {"image", "text", "int", "float"}


def _copy_example(target: Path, name: str) -> Path:
    shutil.copytree(EXAMPLES / "txt2img-example", target / name)
    return target / name


@pytest.mark.parametrize("breakage, message", [
    (lambda folder: (folder / "manifest.json").write_text("{not json"), "Expecting"),
    (lambda folder: (folder / "graph.json").unlink(), "graph.json is missing"),
    (lambda folder: _edit(folder, lambda m: m["inputs"][2].update(maps_to=["99", "color"])), "node '99'"),
    (lambda folder: _edit(folder, lambda m: m["inputs"][0].update(type="colour")), "type must be one of"),
    (lambda folder: _edit(folder, lambda m: m["inputs"][3].update(default="wide")), "default"),
    (lambda folder: _edit(folder, lambda m: m.update(id="../escape")), "must be letters"),
])
def test_a_malformed_folder_is_reported_and_skipped(tmp_path, breakage, message):
    _copy_example(tmp_path, "good")
    broken = _copy_example(tmp_path, "broken")
    _edit(broken, lambda manifest: manifest.update(id="broken-example"))
    breakage(broken)
    workflows, errors = load_workflows(tmp_path)
    assert list(workflows) == ["txt2img-example"]
    assert len(errors) == 1 and errors[0].startswith("broken:") and message in errors[0]


def _edit(folder: Path, change) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    change(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_defaults_fill_in_and_a_random_seed_is_recorded(examples):
    params, seeds = validate_params(examples["txt2img-example"], {"positive_prompt": "a red boat"})
    assert params["positive_prompt"] == "a red boat"
    assert params["seed"] == -1 and params["width"] == 512
    assert isinstance(seeds["seed"], int) and 0 <= seeds["seed"] < 2**32


def test_an_explicit_seed_is_kept_and_a_retry_reuses_the_resolved_one(examples):
    workflow = examples["txt2img-example"]
    assert validate_params(workflow, {"seed": 42})[1] == {"seed": 42}
    assert validate_params(workflow, {"seed": -1}, previous_seeds={"seed": 777})[1] == {"seed": 777}


@pytest.mark.parametrize("params, field", [
    ({"sneaky": 1}, "sneaky"),
    ({"seed": "7"}, "seed"),
    ({"seed": -2}, "seed"),
    ({"width": 10}, "width"),
    ({"width": 4096}, "width"),
    ({"batch_size": 2.5}, "batch_size"),
    ({"batch_size": True}, "batch_size"),
    ({"positive_prompt": ["a", "b"]}, "positive_prompt"),
    ({"positive_prompt": "x" * 5000}, "positive_prompt"),
])
def test_invalid_params_name_the_field(examples, params, field):
    with pytest.raises(ValidationError) as raised:
        validate_params(examples["txt2img-example"], params)
    assert raised.value.field == field
    assert str(raised.value).startswith(field + ": ")


@pytest.mark.parametrize("scenes, field", [
    ("one scene", "scenes"),
    ([], "scenes"),
    ([{"prompt": "x"}] * 9, "scenes"),
    ([{"prompt": "x"}, "second"], "scenes[1]"),
    ([{"prompt": "x", "mood": "sad"}], "scenes[0].mood"),
    ([{"prompt": "x", "duration": 60}], "scenes[0].duration"),
    ([{"prompt": 5}], "scenes[0].prompt"),
    ([{"prompt": "x", "seed": 1.5}], "scenes[0].seed"),
])
def test_invalid_scenes_name_the_scene_and_field(examples, scenes, field):
    with pytest.raises(ValidationError) as raised:
        validate_params(examples["scenes-example"], {"scenes": scenes})
    assert raised.value.field == field


def test_image_inputs(examples):
    with pytest.raises(ValidationError) as raised:
        validate_params(examples["img2vid-example"], {})
    assert raised.value.field == "input_image"
    with pytest.raises(ValidationError) as raised:
        validate_params(examples["txt2img-example"], {}, input_image="cat.png")
    assert raised.value.field == "input_image"


def test_graph_saves_under_the_job_folder_with_the_params(examples):
    workflow = examples["txt2img-example"]
    params, seeds = validate_params(workflow, {"seed": 5, "width": 320, "batch_size": 3})
    graph = build_graph(workflow, params, seeds, OUTPUT_DIR)
    assert graph["1"]["inputs"] == {"width": 320, "height": 512, "batch_size": 3, "color": seed_color(5)}
    assert graph["3"]["inputs"]["filename_prefix"] == f"comfyui-studio/{OUTPUT_DIR}/final"
    assert workflow.graph["3"]["inputs"]["filename_prefix"] == "final"  # the definition is untouched


def test_one_input_can_map_to_several_nodes(examples):
    workflow = examples["img2vid-example"]
    params, seeds = validate_params(workflow, {"frames_per_phase": 6}, input_image="cat_1234.png")
    graph = build_graph(workflow, params, seeds, OUTPUT_DIR, "cat_1234.png")
    assert graph["1"]["inputs"]["image"] == "cat_1234.png"
    assert [graph[node]["inputs"]["amount"] for node in ("3", "5", "8")] == [6, 6, 6]
    assert graph["11"]["inputs"]["filename_prefix"] == f"comfyui-studio/{OUTPUT_DIR}/video"


def test_scenes_repeat_the_block_and_join_in_order(examples):
    workflow = examples["scenes-example"]
    scenes = [{"prompt": "a", "duration": 1.0, "seed": 1}, {"prompt": "b", "duration": 0.5, "seed": 2},
              {"prompt": "c", "duration": 2.0, "seed": -1}]
    params, seeds = validate_params(workflow, {"scenes": scenes, "width": 128})
    assert seeds["scenes"][:2] == [1, 2] and isinstance(seeds["scenes"][2], int)
    graph = build_graph(workflow, params, seeds, OUTPUT_DIR)
    empties = [node for node in graph.values() if node["class_type"] == "EmptyImage"]
    assert [node["inputs"]["batch_size"] for node in empties] == [8, 4, 16]  # seconds x 8 fps
    assert [node["inputs"]["color"] for node in empties] == [seed_color(seed) for seed in seeds["scenes"]]
    assert all(node["inputs"]["width"] == 128 for node in empties)
    # The save node gets ImageBatch(ImageBatch(scene 1, scene 2), scene 3).
    last = graph["3"]["inputs"]["images"]
    outer = graph[last[0]]
    inner = graph[outer["inputs"]["image1"][0]]
    assert outer["class_type"] == inner["class_type"] == "ImageBatch"
    blurs = [inner["inputs"]["image1"], inner["inputs"]["image2"], outer["inputs"]["image2"]]
    sources = [graph[graph[link[0]]["inputs"]["image"][0]] for link in blurs]
    assert [source["inputs"]["batch_size"] for source in sources] == [8, 4, 16]


def _png(size, mode="RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size).save(buffer, format="PNG")
    return buffer.getvalue()


def test_uploads_are_checked_with_pillow():
    assert check_upload(_png((32, 32))) == "png"
    for bad in (b"", b"GIF89a but not really", _png((9000, 10))):
        with pytest.raises(ValidationError) as raised:
            check_upload(bad)
        assert raised.value.field == "input_image"
