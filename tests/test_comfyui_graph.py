"""Reading the parameters, name and origin of a prompt another ComfyUI client queued, from its graph."""
from __future__ import annotations

from history.executors.comfyui_graph import observed_record
from history.executors.comfyui_graph import read_params
from history.executors.comfyui_graph import workflow_name
from tests.comfyui_double import transcript


def page_entry():
    recorded = transcript("09_other_clients.json")
    prompt_id = recorded["prompt_A_page_with_ui_workflow"]
    return next(call["body"][prompt_id] for call in recorded["http"] if call["path"] == f"/history/{prompt_id}")["prompt"]


def test_the_recorded_page_prompt_reads_as_its_sampler_and_checkpoint_say():
    record = observed_record(page_entry(), "http://127.0.0.1:8188")
    assert record["workflow_name"] == "Lighthouse poster"
    assert record["params"]["positive_prompt"] == "a lighthouse at dusk, oil painting"
    assert record["params"]["negative_prompt"] == "blurry, text, watermark"
    assert (record["params"]["checkpoint"], record["params"]["width"], record["params"]["height"]) == (
        "sd_xl_base_1.0.safetensors", 832, 1216)
    assert record["source"] == "ComfyUI's page on http://127.0.0.1:8188"
    assert record["ui_workflow"]["nodes"]


def test_prompts_reached_through_a_conditioning_node_and_a_text_primitive():
    graph = {
        "1": {"class_type": "PrimitiveString", "inputs": {"value": "a red fox"}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": ["1", 0], "clip": ["9", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "ugly", "clip": ["9", 1]}},
        "4": {"class_type": "ConditioningCombine", "inputs": {"conditioning_1": ["2", 0], "conditioning_2": ["2", 0]}},
        "5": {"class_type": "KSamplerAdvanced", "inputs": {
            "noise_seed": 7, "steps": 30, "cfg": 4.0, "sampler_name": "dpmpp_2m", "scheduler": "karras",
            "positive": ["4", 0], "negative": ["3", 0], "latent_image": ["6", 0], "model": ["9", 0]}},
        "6": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 1024, "height": 768, "batch_size": 4}},
        "9": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "flux.safetensors"}},
    }
    params, seeds = read_params(graph)
    assert params == {
        "positive_prompt": "a red fox", "negative_prompt": "ugly", "seed": 7, "steps": 30, "cfg": 4.0,
        "sampler_name": "dpmpp_2m", "scheduler": "karras", "width": 1024, "height": 768, "batch_size": 4,
        "checkpoint": "flux.safetensors",
    }
    assert seeds == {"seed": 7}


def test_a_graph_with_none_of_it_gets_its_node_types_counted_and_the_default_name():
    graph = {"1": {"class_type": "LoadImage", "inputs": {"image": "a.png"}},
             "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
             "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "x"}},
             "bad": "not a node"}
    assert read_params(graph) == ({"nodes": {"ImageInvert": 1, "LoadImage": 1, "SaveImage": 1}}, {})
    assert workflow_name(graph, {}, ["3"]) == "ComfyUI"
    assert workflow_name(graph, {"extra_pnginfo": {"workflow": {"nodes": [], "name": "Portraits v2"}}}, ["3"]) == "Portraits v2"
    assert observed_record("junk", "http://x") is None
