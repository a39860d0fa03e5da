"""LinearAttention: shapes, masks, causality, agreement with the quadratic form, drop-in use, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.flop_counter import FlopCounterMode

from greenmeter import ConfigError
from greenmeter.nn import FEATURE_MAPS, LinearAttention

E, H = 16, 4


def _attn(**kwargs: object) -> LinearAttention:
    torch.manual_seed(0)
    kwargs.setdefault("batch_first", True)
    attn = LinearAttention(E, H, **kwargs).double()  # type: ignore[arg-type]
    with torch.no_grad():  # non-zero biases, so that their handling is checked too
        attn.in_proj_bias.normal_(0, 0.5)
        attn.out_proj.bias.normal_(0, 0.5)
    return attn


def _x(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def reference(attn: LinearAttention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              pad: torch.Tensor | None = None, causal: bool = False) -> torch.Tensor:
    """The same formula computed the quadratic way: A = phi(Q) phi(K)^T (an explicit [L, S] matrix per head),
    masked entries set to 0, rows normalised by their sum + eps; batch-first inputs ``[B, L, E]``."""
    phi = FEATURE_MAPS[attn.feature_map_name]
    w, b = attn.in_proj_weight, attn.in_proj_bias
    d = E // H

    def heads(x: torch.Tensor, i: int, mapped: bool) -> torch.Tensor:
        y = x @ w[i * E:(i + 1) * E].T + b[i * E:(i + 1) * E]
        y = y.reshape(x.shape[0], x.shape[1], H, d).permute(0, 2, 1, 3)
        return phi(y) if mapped else y

    a = heads(q, 0, True) @ heads(k, 1, True).transpose(-1, -2)       # [B, H, L, S]
    if pad is not None:
        a = a.masked_fill(pad[:, None, None, :], 0.0)
    if causal:
        a = a * torch.ones(q.shape[1], k.shape[1], dtype=torch.bool).tril()
    out = (a @ heads(v, 2, False)) / (a.sum(-1, keepdim=True) + attn.eps)
    out = out.permute(0, 2, 1, 3).reshape(q.shape[0], q.shape[1], E)
    return attn.out_proj(out)


def _pad_mask(length: int, lengths: list[int]) -> torch.Tensor:
    return torch.arange(length)[None, :] >= torch.tensor(lengths)[:, None]   # True = padding


# ------------------------------------------------------------------------------------------- shapes


def test_output_shapes_in_every_layout_and_the_layouts_agree() -> None:
    attn = _attn()
    x = _x(3, 7, E)
    out, weights = attn(x, x, x)
    assert out.shape == (3, 7, E) and out.dtype == torch.float64 and weights is None
    seq_first = _attn(batch_first=False)
    seq_first.load_state_dict(attn.state_dict())
    out_sf, _ = seq_first(x.transpose(0, 1), x.transpose(0, 1), x.transpose(0, 1))
    assert out_sf.shape == (7, 3, E)
    torch.testing.assert_close(out_sf.transpose(0, 1), out, rtol=1e-12, atol=1e-12)
    single, _ = attn(x[1], x[1], x[1])                    # unbatched [L, E]
    assert single.shape == (7, E)
    torch.testing.assert_close(single, out[1], rtol=1e-12, atol=1e-12)


def test_cross_attention_with_another_key_length() -> None:
    attn = _attn()
    q, kv = _x(2, 5, E), _x(2, 11, E, seed=2)
    out, _ = attn(q, kv, kv)
    assert out.shape == (2, 5, E)
    torch.testing.assert_close(out, reference(attn, q, kv, kv), rtol=1e-10, atol=1e-12)


def test_batch_first_defaults_to_false_as_in_multihead_attention() -> None:
    assert LinearAttention(E, H).batch_first is nn.MultiheadAttention(E, H).batch_first is False


# -------------------------------------------------------------------------------- agreement with reference


@pytest.mark.parametrize("feature_map", ["elu+1", "relu"])
def test_global_form_equals_the_quadratic_reference(feature_map: str) -> None:
    attn = _attn(feature_map=feature_map)
    q, k, v = _x(2, 9, E), _x(2, 9, E, seed=2), _x(2, 9, E, seed=3)
    torch.testing.assert_close(attn(q, k, v)[0], reference(attn, q, k, v), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("chunk_size", [1, 3, 4, 64])   # 64 > L: one chunk; 3 and 4 leave a partial chunk or not
@pytest.mark.parametrize("feature_map", ["elu+1", "relu"])
def test_causal_form_equals_the_quadratic_reference_for_every_chunk_size(chunk_size: int, feature_map: str) -> None:
    attn = _attn(chunk_size=chunk_size, feature_map=feature_map)
    x = _x(2, 12, E)
    torch.testing.assert_close(attn(x, x, x, is_causal=True)[0], reference(attn, x, x, x, causal=True),
                               rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("causal", [False, True])
def test_padding_equals_the_quadratic_reference(causal: bool) -> None:
    attn = _attn(chunk_size=4)
    x = _x(3, 10, E)
    pad = _pad_mask(10, [10, 6, 1])
    got = attn(x, x, x, key_padding_mask=pad, is_causal=causal)[0]
    torch.testing.assert_close(got, reference(attn, x, x, x, pad=pad, causal=causal), rtol=1e-10, atol=1e-12)


def test_float32_agrees_with_the_float64_reference() -> None:
    attn = _attn()
    x = _x(2, 40, E)
    want = reference(attn, x, x, x, causal=True)
    got = attn.float()(x.float(), x.float(), x.float(), is_causal=True)[0]
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------------ masks


def test_masked_keys_have_no_effect_whatever_their_values() -> None:
    attn = _attn()
    x = _x(2, 8, E)
    pad = _pad_mask(8, [8, 5])
    base = attn(x, x, x, key_padding_mask=pad)[0]
    k, v = x.clone(), x.clone()
    k[1, 5:], v[1, 5:] = 1e6, float("nan")            # huge keys and NaN values at the padded positions
    torch.testing.assert_close(attn(x, k, v, key_padding_mask=pad)[0], base, rtol=1e-12, atol=1e-12)
    unmasked = attn(x, k, v)[0]
    assert torch.isnan(unmasked[1]).all()                                  # unmasked, they do reach the output
    torch.testing.assert_close(unmasked[0], base[0], rtol=1e-12, atol=1e-12)   # sample 0 has no padding


def test_float_padding_mask_as_torch_layers_pass_it_equals_the_bool_mask() -> None:
    attn = _attn()
    x = _x(2, 8, E)
    pad = _pad_mask(8, [8, 3])
    as_float = torch.zeros(2, 8, dtype=torch.float64).masked_fill(pad, float("-inf"))
    torch.testing.assert_close(attn(x, x, x, key_padding_mask=as_float)[0], attn(x, x, x, key_padding_mask=pad)[0],
                               rtol=0, atol=0)


def test_a_query_with_every_key_masked_gives_finite_output() -> None:
    attn = _attn()
    x = _x(1, 4, E)
    out = attn(x, x, x, key_padding_mask=torch.ones(1, 4, dtype=torch.bool))[0]
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, attn.out_proj(torch.zeros(1, 4, E, dtype=torch.float64)).expand_as(out))


def test_causal_output_at_t_ignores_the_future_and_sees_the_past() -> None:
    attn = _attn(chunk_size=4)
    x = _x(2, 13, E)
    base = attn(x, x, x, is_causal=True)[0]
    for t in (0, 3, 4, 9):
        changed = x.clone()
        changed[:, t + 1:] = _x(2, 12 - t, E, seed=7)
        out = attn(changed, changed, changed, is_causal=True)[0]
        torch.testing.assert_close(out[:, :t + 1], base[:, :t + 1], rtol=1e-12, atol=1e-12)
        assert (out[:, t + 1:] - base[:, t + 1:]).abs().amin() > 0      # the later positions did change
    past = x.clone()
    past[:, 0] += 1.0
    assert (attn(past, past, past, is_causal=True)[0][:, -1] - base[:, -1]).abs().max() > 1e-3


def test_causal_attn_masks_in_torch_forms_select_the_causal_form() -> None:
    attn = _attn()
    x = _x(2, 6, E)
    want = attn(x, x, x, is_causal=True)[0]
    as_bool = torch.ones(6, 6, dtype=torch.bool).triu(1)
    as_float = nn.Transformer.generate_square_subsequent_mask(6, dtype=torch.float64)
    for mask in (as_bool, as_float):
        torch.testing.assert_close(attn(x, x, x, attn_mask=mask)[0], want, rtol=0, atol=0)
        torch.testing.assert_close(attn(x, x, x, attn_mask=mask, is_causal=True)[0], want, rtol=0, atol=0)
    nothing = torch.zeros(6, 6, dtype=torch.bool)                    # a mask that blocks nothing
    torch.testing.assert_close(attn(x, x, x, attn_mask=nothing)[0], attn(x, x, x)[0], rtol=0, atol=0)
    assert (want - attn(x, x, x)[0]).abs().max() > 1e-3


def test_a_mask_is_read_once_while_unchanged_and_not_at_all_with_the_is_causal_hint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    attn = _attn()
    reads: list[int] = []
    read = LinearAttention._read_mask
    monkeypatch.setattr(LinearAttention, "_read_mask", staticmethod(lambda *a: reads.append(1) or read(*a)))
    x = _x(2, 6, E)
    mask = torch.ones(6, 6, dtype=torch.bool).triu(1)
    want = attn(x, x, x, attn_mask=mask)[0]
    torch.testing.assert_close(attn(x, x, x, attn_mask=mask)[0], want, rtol=0, atol=0)
    assert len(reads) == 1                                            # the second call used the cached verdict
    mask[0, 3] = False                                                # edited in place: read again, and refused
    with pytest.raises(ConfigError, match="attn_mask"):
        attn(x, x, x, attn_mask=mask)
    # the hint is trusted without reading the mask, as nn.MultiheadAttention documents for is_causal
    torch.testing.assert_close(attn(x, x, x, attn_mask=mask, is_causal=True)[0], want, rtol=0, atol=0)
    with torch.inference_mode():                                      # no version counter: read every time
        fresh = torch.ones(6, 6, dtype=torch.bool).triu(1)
        torch.testing.assert_close(attn(x, x, x, attn_mask=fresh)[0], want, rtol=0, atol=0)
        with pytest.raises(ConfigError, match="attn_mask"):
            attn(x, x, x, attn_mask=torch.eye(6, dtype=torch.bool))


def test_the_module_pickles_after_a_mask_was_read() -> None:
    import io

    attn = _attn()
    x = _x(1, 4, E)
    want = attn(x, x, x, attn_mask=torch.ones(4, 4, dtype=torch.bool).triu(1))[0]
    buf = io.BytesIO()
    torch.save(attn, buf)
    buf.seek(0)
    again = torch.load(buf, weights_only=False)
    torch.testing.assert_close(again(x, x, x, is_causal=True)[0], want, rtol=0, atol=0)


@pytest.mark.parametrize("mask", [
    torch.ones(6, 6, dtype=torch.bool).tril(-1),                      # anti-causal
    torch.eye(6, dtype=torch.bool),
    torch.randn(6, 6, dtype=torch.float64),                           # an additive bias
    torch.ones(2 * H, 6, 6, dtype=torch.bool).triu(1),                # per batch and head
])
def test_other_attn_masks_are_refused(mask: torch.Tensor) -> None:
    attn = _attn()
    x = _x(2, 6, E)
    with pytest.raises(ConfigError, match="attn_mask"):
        attn(x, x, x, attn_mask=mask)


# ------------------------------------------------------------------------------------ training and drop-in


def test_gradients_reach_every_parameter_and_the_input() -> None:
    attn = _attn(chunk_size=3)
    x = _x(2, 7, E).requires_grad_()
    out = attn(x, x, x, key_padding_mask=_pad_mask(7, [7, 4]), is_causal=True)[0]
    out.square().sum().backward()
    for name, p in [*attn.named_parameters(), ("input", x)]:
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    assert torch.autograd.gradcheck(lambda t: attn(t, t, t, is_causal=True)[0], (_x(1, 5, E).requires_grad_(),))


def test_dropout_acts_in_training_only() -> None:
    attn = _attn(dropout=0.5)
    x = _x(2, 8, E)
    attn.eval()
    torch.testing.assert_close(attn(x, x, x)[0], reference(attn, x, x, x), rtol=1e-10, atol=1e-12)
    attn.train()
    torch.manual_seed(0)
    assert (attn(x, x, x)[0] - reference(attn, x, x, x)).abs().max() > 1e-3


class TinyEncoderBlock(nn.Module):
    """A pre-norm encoder block written against the nn.MultiheadAttention interface."""

    def __init__(self, attention: nn.Module) -> None:
        super().__init__()
        self.attention, self.norm1, self.norm2 = attention, nn.LayerNorm(E), nn.LayerNorm(E)
        self.ffn = nn.Sequential(nn.Linear(E, 2 * E), nn.ReLU(), nn.Linear(2 * E, E))

    def forward(self, x: torch.Tensor, pad: torch.Tensor | None = None, causal: bool = False) -> torch.Tensor:
        h = self.norm1(x)
        mask = torch.ones(x.shape[1], x.shape[1], dtype=torch.bool).triu(1) if causal else None
        x = x + self.attention(h, h, h, key_padding_mask=pad, need_weights=False, attn_mask=mask)[0]
        return x + self.ffn(self.norm2(x))


def test_it_drops_into_a_block_written_for_multihead_attention() -> None:
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(E, H, batch_first=True).double()
    blocks = {"softmax": TinyEncoderBlock(mha).double(),
              "linear": TinyEncoderBlock(LinearAttention.from_multihead(mha)).double()}
    x, pad = _x(2, 9, E), _pad_mask(9, [9, 6])
    outs = {name: block(x, pad, causal=True) for name, block in blocks.items()}
    assert outs["linear"].shape == outs["softmax"].shape == (2, 9, E)
    block = blocks["linear"]
    h = block.norm1(x)
    attended = x + reference(block.attention, h, h, h, pad=pad, causal=True)
    torch.testing.assert_close(outs["linear"], attended + block.ffn(block.norm2(attended)), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("mode", ["train", "eval-no-grad"])
def test_torch_transformer_encoder_layer_calls_it_and_not_its_fused_softmax_path(mode: str, causal: bool) -> None:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(E, H, dim_feedforward=32, dropout=0.0, batch_first=True)
    layer.self_attn = LinearAttention.from_multihead(layer.self_attn)
    stack = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
    stack.train(mode == "train")
    x = _x(3, 10, E).float()
    pad = _pad_mask(10, [10, 7, 2])
    mask = torch.ones(10, 10, dtype=torch.bool).triu(1) if causal else None
    with torch.set_grad_enabled(mode == "train"):
        got = stack(x, mask=mask, src_key_padding_mask=pad)
        manual = x
        for lay in stack.layers:
            attended = manual + lay.self_attn(manual, manual, manual, key_padding_mask=pad, is_causal=causal)[0]
            attended = lay.norm1(attended)
            manual = lay.norm2(attended + lay.linear2(F.relu(lay.linear1(attended))))
    # padded positions are garbage either way; every real position must match the module-by-module result
    torch.testing.assert_close(got[~pad], manual[~pad], rtol=1e-5, atol=1e-5)


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors")
def test_a_nested_tensor_from_an_encoder_built_before_the_swap_is_refused_with_the_fix() -> None:
    torch.manual_seed(0)
    stack = nn.TransformerEncoder(nn.TransformerEncoderLayer(E, H, batch_first=True), num_layers=1).eval()
    stack.layers[0].self_attn = LinearAttention.from_multihead(stack.layers[0].self_attn)
    x, pad = torch.randn(2, 5, E), _pad_mask(5, [5, 3])
    with torch.no_grad(), pytest.raises(ConfigError, match="enable_nested_tensor=False"):
        stack(x, src_key_padding_mask=pad)


def test_from_multihead_copies_weights_and_loads_its_state_dict() -> None:
    mha = nn.MultiheadAttention(E, H, dropout=0.1, batch_first=True)
    lin = LinearAttention.from_multihead(mha, feature_map="relu")
    assert (lin.embed_dim, lin.num_heads, lin.dropout, lin.batch_first, lin.feature_map_name) == (E, H, 0.1, True, "relu")
    for name, value in mha.state_dict().items():
        assert torch.equal(lin.state_dict()[name], value), name
    assert lin.in_proj_weight.data_ptr() != mha.in_proj_weight.data_ptr()   # a copy: mha is left as it was
    with pytest.raises(ConfigError):
        LinearAttention.from_multihead(nn.MultiheadAttention(E, H, kdim=8, vdim=8))


# ------------------------------------------------------------------------------------------------- cost


def _flops(fn: object, length: int) -> int:
    x = torch.randn(1, length, E)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        fn(x)  # type: ignore[operator]
    return counter.get_total_flops()


@pytest.mark.parametrize("causal", [False, True])
def test_matmul_flops_grow_linearly_with_length_where_the_quadratic_form_grows_4x(causal: bool) -> None:
    lin = LinearAttention(E, H, batch_first=True, chunk_size=16).eval()
    fast = _flops(lambda x: lin(x, x, x, is_causal=causal), 1024) / _flops(lambda x: lin(x, x, x, is_causal=causal), 512)
    assert fast == 2.0                                                   # exactly linear in length
    slow = _flops(lambda x: reference(lin, x, x, x, causal=causal), 1024) / _flops(
        lambda x: reference(lin, x, x, x, causal=causal), 512)
    assert 3.5 < slow < 4.0                                              # the explicit [L, L] matrix: quadratic


# ----------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"embed_dim": 10, "num_heads": 4}, "divisible"),
    ({"embed_dim": 0, "num_heads": 1}, "embed_dim"),
    ({"feature_map": "softmax"}, "feature_map"),
    ({"feature_map": 3}, "feature_map"),
    ({"dropout": 1.0}, "dropout"),
    ({"eps": 0.0}, "eps"),
    ({"chunk_size": 0}, "chunk_size"),
    ({"add_bias_kv": True}, "add_bias_kv"),
    ({"kdim": 8}, "kdim"),
])
def test_bad_construction_is_a_config_error(kwargs: dict[str, object], match: str) -> None:
    args = {"embed_dim": E, "num_heads": H, **kwargs}
    with pytest.raises(ConfigError, match=match):
        LinearAttention(**args)  # type: ignore[arg-type]


def test_bad_calls_are_config_errors() -> None:
    attn = _attn()
    x = _x(2, 6, E)
    with pytest.raises(ConfigError, match="need_weights"):
        attn(x, x, x, need_weights=True)
    with pytest.raises(ConfigError, match="embed_dim"):
        attn(x[..., :8], x[..., :8], x[..., :8])
    with pytest.raises(ConfigError, match="disagree"):
        attn(x, x, x[:, :5])
    with pytest.raises(ConfigError, match="key_padding_mask"):
        attn(x, x, x, key_padding_mask=torch.zeros(2, 5, dtype=torch.bool))
    with pytest.raises(ConfigError, match="key_padding_mask"):
        attn(x, x, x, key_padding_mask=torch.full((2, 6), -1.0, dtype=torch.float64))
    with pytest.raises(ConfigError, match="as many queries as keys"):
        attn(x, _x(2, 4, E), _x(2, 4, E), is_causal=True)
