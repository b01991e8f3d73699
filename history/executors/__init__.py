"""Executors: one interface (base.py), the built-in Pillow executor and the ComfyUI executor (one or more servers)."""
from __future__ import annotations

from history import files
from history.executors.base import Executor
from history.executors.base import Reporter
from history.executors.builtin import BuiltinExecutor
from history.executors.comfyui_servers import ComfyUIServers


def make_executor(settings, reporter: Reporter) -> Executor:
    """The ComfyUI executor over every STUDIO_COMFYUI_URL server when one is set, else the built-in one."""
    if settings.comfyui_urls:
        return ComfyUIServers(reporter, settings.comfyui_urls, observe=settings.comfyui_observe)
    return BuiltinExecutor(reporter, settings.output_dir, settings.input_dir, files.temp_folder(settings.output_dir))
