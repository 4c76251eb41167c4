"""The decoder's tensor-parallel plan (`MiniMindConfig.base_model_tp_plan`, the plan vLLM's `--tensor-parallel-size`
reads too), checked with transformers' own tensor parallelism: a saved MiniMind-V loaded with
`distributed_config=DistributedConfig(tp_plan="auto")` on two CPU processes (torchrun, gloo) holds half of every
planned projection per rank and gives the logits of the unsharded model. The child processes load only the saved
folder's remote code.
"""

import json
import os
import subprocess
import sys

import pytest

from conftest import tiny_model

WORKER = r"""
import json, os, sys
import torch
from transformers import AutoModelForImageTextToText
from transformers.distributed import DistributedConfig

folder, out = sys.argv[1], sys.argv[2]
sharded = AutoModelForImageTextToText.from_pretrained(
    folder, trust_remote_code=True, distributed_config=DistributedConfig(tp_plan="auto")).eval()
whole = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True).eval()
config = whole.config
generator = torch.Generator().manual_seed(0)
ids = torch.randint(6, config.text_config.vocab_size, (2, 24), generator=generator)
ids[:, 2:2 + config.image_seq_length] = config.image_token_id
pixel_values = torch.randn(2, 3, 48, 48, generator=generator)
with torch.no_grad():
    a = sharded(input_ids=ids, pixel_values=pixel_values).logits
    b = whole(input_ids=ids, pixel_values=pixel_values).logits
a = a.full_tensor() if hasattr(a, "full_tensor") else a
layer = sharded.model.language_model.layers[0]
local = lambda p: list((p.to_local() if hasattr(p, "to_local") else p).shape)
shapes = {name: local(module.weight) for name, module in (
    ("q_proj", layer.self_attn.q_proj), ("k_proj", layer.self_attn.k_proj), ("o_proj", layer.self_attn.o_proj),
    *((name, getattr(layer.mlp, name)) for name in ("gate_proj", "up_proj", "down_proj") if hasattr(layer.mlp, name)))}
with open(os.path.join(out, f"rank{os.environ['RANK']}.json"), "w") as f:
    json.dump({"max_diff": (a - b).abs().max().item(), "shapes": shapes, "tp_size": sharded.tp_size}, f)
"""


@pytest.mark.parametrize("moe", [False, True], ids=["dense", "moe"])
def test_tp_plan_auto_on_two_cpu_processes(tmp_path, moe):
    overrides = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=64) if moe else {}
    model = tiny_model(**overrides)
    model.save_pretrained(tmp_path / "model")
    text = model.config.text_config
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "--no-python",
         sys.executable, "-c", WORKER, str(tmp_path / "model"), str(tmp_path)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
             "HF_MODULES_CACHE": str(tmp_path / "hf_modules"),
             # kept when set: transformers 5.25 kernelizes every model unless told not to
             **{k: os.environ[k] for k in ("USE_HUB_KERNELS",) if k in os.environ}},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    hidden, head_dim = text.hidden_size, text.head_dim
    expected = {"q_proj": [text.num_attention_heads * head_dim // 2, hidden],
                "k_proj": [text.num_key_value_heads * head_dim // 2, hidden],
                "o_proj": [hidden, text.num_attention_heads * head_dim // 2]}
    if not moe:  # MoE layers: the experts are not in the plan and stay whole (vLLM shards them itself)
        expected.update(gate_proj=[text.intermediate_size // 2, hidden], up_proj=[text.intermediate_size // 2, hidden],
                        down_proj=[hidden, text.intermediate_size // 2])
    for rank in (0, 1):
        report = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert report["tp_size"] == 2
        assert report["shapes"] == expected, report["shapes"]
        assert report["max_diff"] < 1e-5, report["max_diff"]  # NaN fails too
