"""The wheel ships every package: pyproject's explicit package list covers each source folder
(a folder missing from it works in the editable install and is absent from `pip install .`,
as trainers/tasks was from the Docker images)."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_folder_is_listed_in_pyproject() -> None:
    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    dirs = setup["package-dir"]
    assert set(dirs) == set(setup["packages"])
    folders = {"advorch." + init.parent.relative_to(ROOT).as_posix().replace("/", ".")
               for top in ("pipelines", "trainers", "tuning") for init in (ROOT / top).rglob("__init__.py")}
    listed = {name for name, folder in dirs.items() if name != "advorch"}
    assert folders == {f"advorch.{folder.replace('/', '.')}" for folder in
                       (dirs[name] for name in listed)}
    assert all((ROOT / folder / "__init__.py").is_file() for folder in dirs.values())
