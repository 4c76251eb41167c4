"""Shared fixtures: tiny model configs and a runner for Python processes that cannot import the project.

Run the whole suite with `python -m pytest tests -q` from the repository root.
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent


def tiny_config(**overrides):
    from modeling_minimind_v import MiniMindVConfig

    return MiniMindVConfig.from_preset("tiny", **overrides)


def tiny_model(seed: int = 0, **overrides):
    from modeling_minimind_v import MiniMindVForConditionalGeneration

    torch.manual_seed(seed)
    return MiniMindVForConditionalGeneration(tiny_config(**overrides)).eval()


def shipped_processor(config=None):
    """A processor for `config` (default: the tiny preset) built with the shipped tokenizer."""
    from processing.processors import build_processor
    from processing.tokenizers import load_default_tokenizer

    config = config if config is not None else tiny_config()
    return build_processor(load_default_tokenizer(), config.vision_config, config.image_seq_length)


def run_isolated(code: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run `code` in `python -I` from `cwd`, where nothing of this project can be imported.

    `-I` drops PYTHONPATH, the script folder and user site. The project may still be pip-installed in editable mode
    (CI does that), so its finders are removed from sys.meta_path and a finder that refuses the project's packages
    goes first: the child can only reach the code that a saved folder carries (trust_remote_code), as a user
    without the project would.
    """
    prelude = textwrap.dedent(
        """
        import sys
        def _editable(obj):
            return "__editable__" in getattr(obj, "__module__", "") + type(obj).__module__
        sys.meta_path[:] = [f for f in sys.meta_path if not _editable(f)]
        sys.path_hooks[:] = [h for h in sys.path_hooks if not _editable(h)]
        sys.path_importer_cache.clear()
        class _BlockProject:
            BLOCKED = {"processing", "modeling_minimind_v", "minimind_v_configs", "scripts", "tests"}
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in self.BLOCKED:
                    raise ModuleNotFoundError(f"{name} is blocked: the project must not be importable here")
                return None
        sys.meta_path.insert(0, _BlockProject())
        for _name in ("processing", "modeling_minimind_v"):
            try:
                __import__(_name)
            except ImportError:
                pass
            else:
                raise SystemExit(f"isolation failed: {_name} is importable")
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_HUB_OFFLINE"] = "1"
    env["HF_MODULES_CACHE"] = str(Path(cwd) / "hf_modules")
    return subprocess.run(
        [sys.executable, "-I", "-c", prelude + textwrap.dedent(code)], cwd=cwd, env=env,
        capture_output=True, text=True, timeout=timeout,
    )


@pytest.fixture(scope="session")
def tiny_processor():
    """The tiny preset's processor with the shipped tokenizer."""
    return shipped_processor()


@pytest.fixture(scope="session")
def shapes_data(tmp_path_factory):
    """The synthetic shapes task at 48 px: 16 train images (pretrain/sft rows) and 8 held-out ones (eval rows)."""
    from processing.synthetic import make_dataset

    root = tmp_path_factory.mktemp("shapes")
    make_dataset(root, n_train=16, n_eval=8, seed=0, image_size=48)
    return root


@pytest.fixture
def isolated(tmp_path):
    def _run(code: str, timeout: int = 300):
        result = run_isolated(code, tmp_path, timeout)
        assert result.returncode == 0, f"isolated process failed:\n{result.stdout}\n{result.stderr}"
        return result

    return _run


def run_script(script: str, *args) -> subprocess.Popen:
    """Start `scripts/<script>` of this checkout with this checkout's library first on the path (ahead of any
    editable install of another copy); stdout and stderr are captured as text."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    return subprocess.Popen([sys.executable, str(REPO_ROOT / "scripts" / script), *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
