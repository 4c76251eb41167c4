"""Model presets (tiny, small, base, moe, qwen3-0.6b) as JSON, plus Accelerate launch configs: package data.

Installed as the package ``minimind_v_configs`` (see setup.py), so the presets travel with a non-editable install
too. ``preset_path`` and ``available_presets`` locate them wherever the package lives; remote code that may import
only the standard library can do the same with ``importlib.resources.files("minimind_v_configs")``.
"""

from importlib.resources import files
from pathlib import Path

PRESET_SUFFIX = ".json"


def _folder():
    return files(__name__)


def available_presets() -> list[str]:
    """Names of the shipped presets, sorted (the JSON files of this package, without the suffix)."""
    return sorted(item.name[: -len(PRESET_SUFFIX)] for item in _folder().iterdir()
                  if item.name.endswith(PRESET_SUFFIX))


def preset_path(name: str) -> Path:
    """The JSON file of preset `name`; a ValueError naming the available presets when there is none."""
    path = Path(str(_folder().joinpath(f"{name}{PRESET_SUFFIX}")))
    if not path.is_file():
        raise ValueError(f"Unknown preset {name!r}; available: {available_presets()}")
    return path


__all__ = ["available_presets", "preset_path"]
