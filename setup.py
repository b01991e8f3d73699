"""Build hook: the wheel carries the top-level templates/, partials/ and static/ inside the history package.

The checkout keeps them at the top (the layout the design fixes); an installed studio finds them next to
its modules (history.asset_dir), so `pip install .` serves the same pages as `make run`.
"""
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
ASSET_FOLDERS = ("templates", "partials", "static")


class BuildWithAssets(build_py):
    """build_py that also copies the asset folders into history/ of the build."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads them from the checkout itself
        for name in ASSET_FOLDERS:
            self.copy_tree(str(ROOT / name), str(Path(self.build_lib) / "history" / name))


setup(cmdclass={"build_py": BuildWithAssets})
