"""Executors: one interface (base.py), the built-in Pillow executor and the ComfyUI executor."""
from __future__ import annotations

from history import files
from history.executors.base import Executor
from history.executors.base import Reporter
from history.executors.builtin import BuiltinExecutor
from history.executors.comfyui import ComfyUIExecutor


def make_executor(settings, reporter: Reporter) -> Executor:
    """The ComfyUI executor when STUDIO_COMFYUI_URL is set, else the built-in one."""
    if settings.comfyui_url:
        return ComfyUIExecutor(reporter, settings.comfyui_url, observe=settings.comfyui_observe)
    return BuiltinExecutor(reporter, settings.output_dir, settings.input_dir, files.temp_folder(settings.output_dir))
