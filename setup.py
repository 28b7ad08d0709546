"""Build step beside pyproject.toml (which holds everything else): a wheel carries the
repository's commented config.toml as pacsnode/example-config.toml, which `pacsnode config init`
writes and the demo starts from (pacsnode/example_config.py)."""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildPyWithExampleConfig(build_py):
    def run(self) -> None:
        super().run()
        source = Path(__file__).resolve().parent / "config.toml"
        target = Path(self.build_lib) / "pacsnode" / "example-config.toml"
        self.mkpath(str(target.parent))
        self.copy_file(str(source), str(target))


setup(cmdclass={"build_py": BuildPyWithExampleConfig})
