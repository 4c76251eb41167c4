"""The transformers compatibility layer (modeling_minimind_v/compat.py): the declared range, and the KV cache accepted
under both names that transformers releases in the range use (`past_key_values` before 5.24, `cache` from 5.24)."""

import re

import pytest
import torch
import transformers
from conftest import REPO_ROOT, tiny_model
from packaging.specifiers import SpecifierSet
from transformers import DynamicCache

from modeling_minimind_v import compat


def test_declared_range_is_the_one_setup_py_installs_and_holds_the_installed_release():
    declared = re.search(r'"transformers([^"]+)"', (REPO_ROOT / "setup.py").read_text()).group(1)
    assert declared == compat.TRANSFORMERS_RANGE
    assert transformers.__version__ in SpecifierSet(compat.TRANSFORMERS_RANGE)


def test_model_card_states_the_range(tmp_path):
    tiny_model().save_pretrained(tmp_path)
    assert f"transformers{compat.TRANSFORMERS_RANGE}" in (tmp_path / "README.md").read_text()


def test_pop_cache_takes_either_name_but_not_two_caches():
    a, b = DynamicCache(), DynamicCache()
    assert compat.pop_cache(None, {"cache": a}) is a
    assert compat.pop_cache(a, {}) is a
    assert compat.pop_cache(a, {"cache": a}) is a
    with pytest.raises(ValueError, match="not both"):
        compat.pop_cache(a, {"cache": b})


@pytest.mark.parametrize("name", ["past_key_values", "cache"])
def test_incremental_decoding_reads_the_cache_under_either_name(name):
    model = tiny_model(seed=4)
    with torch.no_grad():
        for p in model.parameters():  # wide weights: a decode step without its past gives visibly other logits
            if p.ndim >= 2:
                p.normal_(0.0, 0.3)
    ids = torch.randint(10, model.config.text_config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = model(input_ids=ids, use_cache=False).logits
        out = model(input_ids=ids[:, :8], use_cache=True)
        cache = compat.output_cache(out)
        assert cache is not None and cache.get_seq_length() == 8
        for t in range(8, 12):
            out = model(input_ids=ids[:, t : t + 1], use_cache=True, **{name: cache})
            torch.testing.assert_close(out.logits[:, -1], full[:, t], atol=1e-5, rtol=1e-5)
            cache = compat.output_cache(out)
