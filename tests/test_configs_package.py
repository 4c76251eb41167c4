"""The presets ship inside the installed package (configs/ installed as `minimind_v_configs`): a non-editable
install into a fresh folder, imported from a neutral working directory, has every preset and they load."""

import json
import os
import shutil
import subprocess
import sys

import pytest
from conftest import REPO_ROOT

PRESETS = sorted(p.stem for p in (REPO_ROOT / "configs").glob("*.json"))
# What a non-editable install needs from the checkout; everything else (tests, scripts, docs) stays behind.
SOURCES = ("setup.py", "modeling_minimind_v", "processing", "configs")


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """`pip install --no-deps --target DIR` of a copy of the checkout (so the build writes nothing into it)."""
    root = tmp_path_factory.mktemp("install")
    source = root / "source"
    for name in SOURCES:
        path = REPO_ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            source.mkdir(exist_ok=True)
            shutil.copy2(path, source / name)
    target = root / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(target), str(source)], check=True, capture_output=True,
                   timeout=300)
    return target


def _run_installed(target, cwd, code: str) -> subprocess.CompletedProcess:
    """Run `code` with only the installed copy on the path (PYTHONPATH first, ahead of any editable install)."""
    env = {**os.environ, "PYTHONPATH": str(target)}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def test_presets_are_installed_and_load(installed, tmp_path):
    assert PRESETS and {p.stem for p in (installed / "minimind_v_configs").glob("*.json")} == set(PRESETS)
    assert {p.name for p in (installed / "minimind_v_configs" / "accelerate").iterdir()} == {"ddp.yaml",
                                                                                               "fsdp.yaml"}
    result = _run_installed(installed, tmp_path, f"""
import json
import minimind_v_configs, modeling_minimind_v
from modeling_minimind_v import MiniMindVConfig
for module in (minimind_v_configs, modeling_minimind_v):
    assert module.__file__.startswith({str(installed)!r}), module.__file__
names = minimind_v_configs.available_presets()
loaded = {{}}
for name in names:
    fields = json.loads(minimind_v_configs.preset_path(name).read_text())
    fields.pop("_comment", None)
    loaded[name] = MiniMindVConfig(**fields).image_seq_length
print(json.dumps({{"names": names, "image_seq_length": loaded}}))
""")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["names"] == PRESETS
    assert report["image_seq_length"]["small"] == 196 and report["image_seq_length"]["tiny"] == 9


def test_unknown_preset_names_the_available_ones(installed, tmp_path):
    result = _run_installed(installed, tmp_path, """
import minimind_v_configs
try:
    minimind_v_configs.preset_path("nope")
except ValueError as error:
    print(error)
""")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Unknown preset 'nope'" in result.stdout and "'small'" in result.stdout


def test_from_preset_works_after_a_non_editable_install(installed, tmp_path):
    result = _run_installed(installed, tmp_path, """
from modeling_minimind_v import MiniMindVConfig
print(MiniMindVConfig.from_preset("small").image_seq_length)
""")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "196"
