"""Connectors: output shapes, token stacking, the registry and LLaVA-compatible parameter names."""

from __future__ import annotations

import pytest
import torch

from vlmkit.models.connectors import CONNECTORS, TokenStacker, build_connector


@pytest.mark.parametrize("name", ["linear", "mlp2x_gelu"])
@pytest.mark.parametrize("n", [1, 16, 49])
def test_token_preserving_connectors(name, n):
    conn = build_connector(name, 32, 48)
    out = conn(torch.randn(3, n, 32))
    assert out.shape == (3, n, 48)
    assert conn.num_output_tokens(n) == n


@pytest.mark.parametrize("name", ["linear", "mlp2x_gelu"])
def test_downsample_stacks_consecutive_tokens(name):
    conn = build_connector(name, 8, 16, downsample=4)
    assert conn(torch.randn(2, 10, 8)).shape == (2, 3, 16)  # ceil(10 / 4)
    assert conn.num_output_tokens(10) == 3
    assert conn(torch.randn(2, 12, 8)).shape == (2, 3, 16)


def test_token_stacker_concatenates_in_order_and_zero_pads():
    x = torch.arange(2 * 5 * 2, dtype=torch.float32).reshape(2, 5, 2)
    out = TokenStacker(2)(x)
    assert out.shape == (2, 3, 4)
    assert out[0, 0].tolist() == x[0, 0].tolist() + x[0, 1].tolist()
    assert out[1, 1].tolist() == x[1, 2].tolist() + x[1, 3].tolist()
    assert out[0, 2].tolist() == x[0, 4].tolist() + [0.0, 0.0]
    assert torch.equal(TokenStacker(1)(x), x)


@pytest.mark.parametrize("n", [1, 7, 64])
def test_qformer_outputs_num_queries_whatever_the_input_length(n):
    conn = build_connector("qformer", 32, 48, num_queries=6)
    out = conn(torch.randn(2, n, 32))
    assert out.shape == (2, 6, 48)
    assert conn.num_output_tokens(n) == 6


def test_qformer_attends_to_the_features():
    torch.manual_seed(0)
    conn = build_connector("qformer", 32, 48, num_queries=4).eval()
    a, b = torch.randn(1, 9, 32), torch.randn(1, 9, 32)
    assert not torch.allclose(conn(a), conn(b))
    # Per-sample: one item's output does not depend on the others in the batch.
    assert torch.allclose(conn(torch.cat([a, b]))[0], conn(a)[0], atol=1e-5)


def test_qformer_with_odd_width_picks_a_valid_head_count():
    conn = build_connector("qformer", 30, 16, num_queries=3, num_heads=4)
    assert conn(torch.randn(1, 5, 30)).shape == (1, 3, 16)


def test_mlp2x_gelu_parameter_names_match_llava():
    conn = build_connector("mlp2x_gelu", 32, 48)
    assert set(conn.state_dict()) == {"linear_1.weight", "linear_1.bias", "linear_2.weight", "linear_2.bias"}
    assert conn.linear_1.weight.shape == (48, 32) and conn.linear_2.weight.shape == (48, 48)
    x = torch.randn(1, 3, 32)
    expected = conn.linear_2(torch.nn.functional.gelu(conn.linear_1(x)))
    assert torch.allclose(conn(x), expected)


@pytest.mark.slow
def test_mlp2x_gelu_loads_into_transformers_llava_projector():
    from transformers import LlavaConfig
    from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

    config = LlavaConfig(
        vision_config={"model_type": "clip_vision_model", "hidden_size": 32, "num_attention_heads": 4},
        text_config={"model_type": "llama", "hidden_size": 48, "num_attention_heads": 4},
        projector_hidden_act="gelu",
    )
    native = LlavaMultiModalProjector(config)
    conn = build_connector("mlp2x_gelu", 32, 48)
    native.load_state_dict(conn.state_dict(), strict=True)
    x = torch.randn(2, 5, 32)
    assert torch.allclose(native(x), conn(x), atol=1e-6)


def test_unknown_connector_names_the_valid_ones():
    with pytest.raises(ValueError) as err:
        build_connector("resampler9000", 8, 8)
    assert "resampler9000" in str(err.value)
    for name in CONNECTORS:
        assert name in str(err.value)
