"""The transformer block is written once (`models.user_encoder.Block`): training's full forward,
serving's last-position path and AutoCDSR's attention read-out give the same numbers, for every
block option, with left padding, empty histories and 1-3 layers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from models.user_encoder import Dropout, UserEncoder, UserEncoderConfig

OPTIONS = {
    "pre-norm": {},
    "post-norm": {"norm_first": False},
    "gated": {"gated": True},
    "filter": {"filter": True},
    "post-norm+filter": {"norm_first": False, "filter": True},
}


def _encoder(layers: int, **options: bool) -> UserEncoder:
    torch.manual_seed(layers)
    config = UserEncoderConfig(
        num_surfaces=4, dim=16, num_heads=2, max_len=12, num_layers=layers, **options
    )
    return UserEncoder(config).eval()


def _batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(7)
    x = torch.randn(4, 9, 16)
    surfaces = torch.randint(0, 4, (4, 9))
    mask = torch.ones(4, 9, dtype=torch.bool)
    mask[1, :4] = False  # a shorter history, left-padded
    mask[2, :] = False  # no events at all
    mask[3, :8] = False  # one event
    return x, surfaces, mask


@pytest.mark.parametrize("layers", [1, 2, 3])
@pytest.mark.parametrize("option", list(OPTIONS))
def test_serving_path_equals_the_last_position_of_the_full_forward(layers: int, option: str):
    enc = _encoder(layers, **OPTIONS[option])
    x, surfaces, mask = _batch()
    with torch.inference_mode():
        full = enc(x, surfaces, mask)  # (B, T, D)
        torch.testing.assert_close(enc.encode(x, surfaces, mask), full[:, -1], rtol=1e-5, atol=1e-6)
        hidden, probs = enc.forward_with_attention(x, surfaces, mask)
    torch.testing.assert_close(hidden, full, rtol=1e-5, atol=1e-6)
    assert len(probs) == layers and probs[0].shape == (4, 2, 9, 9)
    torch.testing.assert_close(probs[-1].sum(-1), torch.ones(4, 2, 9))


@pytest.mark.parametrize("option", list(OPTIONS))
def test_padding_and_the_future_never_reach_a_real_position(option: str) -> None:
    enc = _encoder(2, **OPTIONS[option])
    x, surfaces, mask = _batch()
    with torch.inference_mode():
        short = enc.encode(x[1:2, 4:], surfaces[1:2, 4:], mask[1:2, 4:])
        padded_x = x[1:2].clone()
        padded_x[:, :4] = 100.0  # garbage in the padding
        long = enc.encode(padded_x, surfaces[1:2], mask[1:2])
        torch.testing.assert_close(short, long, rtol=1e-5, atol=1e-5)
        before = enc(x[:1], surfaces[:1], mask[:1])
        changed = x[:1].clone()
        changed[:, 6:] = torch.randn(1, 3, 16)
        after = enc(changed, surfaces[:1], mask[:1])
    torch.testing.assert_close(before[:, :6], after[:, :6])
    assert not torch.allclose(before[:, 6:], after[:, 6:])


def test_the_block_matches_torch_transformer_layer_and_loads_its_weights() -> None:
    """Against a reference: the default (pre-norm) block is nn.TransformerEncoderLayer's math,
    and a model saved with that layer's parameter names (before Block existed) loads."""
    torch.manual_seed(0)
    enc = _encoder(2)
    x, surfaces, mask = _batch()
    layers = [
        torch.nn.TransformerEncoderLayer(
            16, 2, 64, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        ).eval()
        for _ in range(2)
    ]
    old_state = {k: v for k, v in enc.state_dict().items() if not k.startswith("blocks.")}
    for i, layer in enumerate(layers):
        for name, value in layer.state_dict().items():
            old_state[f"blocks.layers.{i}.{name}"] = value
    enc.load_state_dict(old_state)
    tokens, allowed = enc._tokens(x, surfaces, mask)
    ref = tokens
    for layer in layers:
        ref = layer(ref, src_mask=~allowed[:, 0].repeat_interleave(2, dim=0))
    with torch.inference_mode():
        torch.testing.assert_close(enc(x, surfaces, mask), enc.norm(ref), rtol=1e-5, atol=1e-5)


def test_attention_probabilities_are_softmax_of_scaled_scores() -> None:
    """need_weights computes the probabilities explicitly: check them against F.softmax of the
    scaled query-key products of the first block on a batch without padding."""
    enc = _encoder(1)
    x, surfaces, _ = _batch()
    mask = torch.ones(4, 9, dtype=torch.bool)
    with torch.inference_mode():
        tokens, _allowed = enc._tokens(x, surfaces, mask)
        block = enc.blocks[0]
        q, k, _ = block.attn_in(block.norm1(tokens)).view(4, 9, 3, 2, 8).permute(2, 0, 3, 1, 4)
        causal = torch.ones(9, 9, dtype=torch.bool).tril()
        expected = F.softmax((q @ k.transpose(-2, -1) / 8**0.5).masked_fill(~causal, -1e9), -1)
        _, probs = enc.forward_with_attention(x, surfaces, mask)
    torch.testing.assert_close(probs[0], expected, rtol=1e-5, atol=1e-6)


def test_block_config_refusals() -> None:
    with pytest.raises(ValueError, match="gated residuals need pre-norm"):
        UserEncoderConfig(num_surfaces=2, gated=True, norm_first=False)
    with pytest.raises(ValueError, match="dropout must be in"):
        UserEncoderConfig(num_surfaces=2, dropout=1.0)


def test_dropout_zeroes_with_probability_p_and_rescales_the_rest() -> None:
    torch.manual_seed(0)
    drop = Dropout(0.3).train()
    x = torch.full((200_000,), 2.0, requires_grad=True)
    y = drop(x)
    kept = y != 0
    assert abs(1 - kept.float().mean().item() - 0.3) < 0.005  # ~ 4 standard errors
    for lane in range(4):  # each 16-bit lane of the generator's 64-bit words drops at p too
        assert abs(1 - kept[lane::4].float().mean().item() - 0.3) < 0.01
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], 2.0 / 0.7))
    y.sum().backward()  # the gradient is the same mask and scale
    torch.testing.assert_close(x.grad, kept.float() / 0.7)
    assert torch.equal(Dropout(0.3).eval()(x), x)
    assert torch.equal(Dropout(0.0).train()(x), x)


def test_training_attention_with_dropout_off_equals_the_eval_path() -> None:
    """With dropout 0 the training forward takes scaled_dot_product_attention; with dropout
    on, the CPU takes the explicit path: at p = 0 both paths must agree."""
    x, surfaces, mask = _batch()
    encoder = _encoder(2)
    expected = encoder(x, surfaces, mask)
    for block in encoder.blocks:
        block.dropout.p = 1e-12  # takes the explicit path, drops nothing
    encoder.train()
    encoder.dropout.p = 0.0
    torch.testing.assert_close(encoder(x, surfaces, mask), expected)
