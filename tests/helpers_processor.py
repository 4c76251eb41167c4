"""Helpers for the processor and pipeline tests: a tiny byte-level BPE tokenizer, images, processors, isolation.

The tokenizer is trained here with the `tokenizers` library so these tests do not depend on the shipped one; it has
the project's special tokens with the project's ids (0 pad, 1 im_start, 2 im_end/eos, 3-5 vision tokens).
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import PIL.Image
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, CLIPVisionConfig, PreTrainedTokenizerFast, SiglipVisionConfig

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>"]
SHIPPED_TOKENIZER = Path(__file__).resolve().parent.parent / "processing" / "tokenizer"

_CORPUS = [
    "You are a helpful assistant. Describe the image in a few words.",
    "What colour is the square? The square is red. It is on the left.",
    "How many circles are there? There are two blue circles and one green one.",
    "user assistant system hello world the a an is are of in on with and",
    "0 1 2 3 4 5 6 7 8 9 . , ? ! : ; ' \" ( ) - _ < > / \n",
]


def make_tokenizer(save_dir: Path, vocab_size: int = 400):
    """Train a tiny byte-level BPE tokenizer, save it to `save_dir` and load it back with AutoTokenizer."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_CORPUS * 4, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=SPECIAL_TOKENS[1:],
    )
    tokenizer.save_pretrained(save_dir)
    return AutoTokenizer.from_pretrained(save_dir)


def clip_vision_config(image_size: int = 224, patch_size: int = 16) -> CLIPVisionConfig:
    return CLIPVisionConfig(
        image_size=image_size, patch_size=patch_size, hidden_size=32, intermediate_size=64,
        num_hidden_layers=1, num_attention_heads=2,
    )


def siglip_vision_config(image_size: int = 224, patch_size: int = 16) -> SiglipVisionConfig:
    return SiglipVisionConfig(
        image_size=image_size, patch_size=patch_size, hidden_size=32, intermediate_size=64,
        num_hidden_layers=1, num_attention_heads=2,
    )


def solid_image(color=(200, 30, 30), size=(20, 16), mode="RGB") -> PIL.Image.Image:
    return PIL.Image.new("RGB", size, color).convert(mode)


def run_isolated(code: str, cwd: Path, timeout: int = 240) -> subprocess.CompletedProcess:
    """Run `code` under `python -I` in `cwd` where neither `processing` nor `modeling_minimind_v` can be imported.

    `-I` drops PYTHONPATH, the script folder and user site; the project may still be pip-installed in editable
    mode (CI does that), so a meta-path finder refuses the project's packages, as for a user without the project.
    """
    prelude = textwrap.dedent(
        """
        import sys
        class _BlockProject:
            BLOCKED = {"processing", "modeling_minimind_v", "scripts", "tests"}
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
        [sys.executable, "-I", "-c", prelude + textwrap.dedent(code)],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
    )
