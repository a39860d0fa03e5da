"""Linear attention: a drop-in for ``torch.nn.MultiheadAttention`` whose cost grows linearly with length.

Softmax attention forms the ``L x S`` matrix ``softmax(Q K^T / sqrt(d))``: time and memory grow as the
square of the sequence length. Kernel (feature-map) attention (Katharopoulos et al., 2020, "Transformers
are RNNs") replaces ``exp(q . k)`` with ``phi(q) . phi(k)`` for a positive feature map ``phi`` (default
``elu(x) + 1``), so the products can be reassociated::

    out_i = phi(q_i)^T (sum_j phi(k_j) v_j^T) / (phi(q_i)^T sum_j phi(k_j) + eps)

which costs ``O(N d^2)`` per head instead of ``O(N^2 d)`` (``d`` = head size) and never builds the
``N x N`` matrix. The causal form replaces the sums by prefix sums (a running ``d x d`` state), computed
here chunk by chunk: exact and quadratic inside a chunk of ``chunk_size`` positions, a carried state
between chunks, so memory is ``O(N * chunk_size + (N / chunk_size) d^2)``.

It is a different function from softmax attention, not an approximation that converges to it: a model
trained with it learns with it. Swapping it into a model trained with softmax attention
(:meth:`LinearAttention.from_multihead`) keeps the weights but changes the outputs; fine-tune after.

Typical use, in place of ``nn.MultiheadAttention(64, 4, batch_first=True)``::

    attn = LinearAttention(64, 4, batch_first=True)
    out, _ = attn(x, x, x, key_padding_mask=pad)        # x: [B, L, 64], pad: [B, L] bool, True = padding
    out, _ = attn(x, x, x, is_causal=True)              # position t sees positions <= t only
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from greenmeter._checks import fraction, number, whole_number
from greenmeter._errors import ConfigError

__all__ = ["FEATURE_MAPS", "LinearAttention"]

FeatureMap = Callable[[Tensor], Tensor]


def _elu_plus_one(x: Tensor) -> Tensor:
    return F.elu(x) + 1.0


#: Named feature maps ``phi``: each maps any real tensor elementwise to non-negative values.
FEATURE_MAPS: dict[str, FeatureMap] = {"elu+1": _elu_plus_one, "relu": F.relu}


class LinearAttention(nn.Module):
    """Multi-head kernel attention with linear cost in sequence length, called like ``nn.MultiheadAttention``.

    The constructor takes ``nn.MultiheadAttention``'s arguments in the same order with the same defaults
    (``batch_first=False`` included, so a swap never silently reads the batch as the sequence), and the
    parameters carry the same names and shapes (``in_proj_weight [3E, E]``, ``in_proj_bias [3E]``,
    ``out_proj``): a ``MultiheadAttention`` state dict loads into it unchanged.

    Args:
        embed_dim: model width ``E``; must be divisible by ``num_heads``.
        num_heads: parallel heads; each works on ``E / num_heads`` features.
        dropout: dropout probability on the attended values of each head, before the output projection
            (there is no attention matrix to drop entries from). 0 by default.
        bias: add biases to the input and output projections.
        add_bias_kv: not supported (``True`` raises :class:`ConfigError`).
        add_zero_attn: not supported (``True`` raises :class:`ConfigError`).
        kdim: key feature size; only ``None`` or ``embed_dim`` are supported.
        vdim: value feature size; only ``None`` or ``embed_dim`` are supported.
        batch_first: inputs and output are ``[batch, seq, feature]`` when True, ``[seq, batch, feature]``
            when False (the default, as for ``nn.MultiheadAttention``).
        device: where to create the parameters.
        dtype: the parameters' dtype.
        feature_map: ``phi``: ``"elu+1"`` (default), ``"relu"``, or a callable mapping a tensor elementwise
            to non-negative values.
        eps: added to each normaliser ``phi(q_i)^T sum_j phi(k_j)`` so that a query with no visible key
            (all masked) gives zeros instead of NaN.
        chunk_size: positions per chunk of the causal form (memory ``O(N * chunk_size)`` for the
            in-chunk products; larger chunks do more work as matrix products).

    Raises:
        ConfigError: a bad or unsupported argument.
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        dropout: float = 0.0,
        bias: bool = True,
        add_bias_kv: bool = False,
        add_zero_attn: bool = False,
        kdim: int | None = None,
        vdim: int | None = None,
        batch_first: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        feature_map: str | FeatureMap = "elu+1",
        eps: float = 1e-6,
        chunk_size: int = 64,
    ) -> None:
        super().__init__()
        for name, value in (("embed_dim", embed_dim), ("num_heads", num_heads), ("chunk_size", chunk_size)):
            whole_number(name, value, minimum=1)
        if embed_dim % num_heads:
            raise ConfigError(f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
        fraction("dropout", dropout, high_open=True)
        number("eps", eps, low=0, low_open=True)
        if add_bias_kv or add_zero_attn:
            raise ConfigError("LinearAttention does not support add_bias_kv or add_zero_attn")
        if kdim not in (None, embed_dim) or vdim not in (None, embed_dim):
            raise ConfigError(f"LinearAttention needs keys and values of width embed_dim ({embed_dim}); "
                              f"got kdim={kdim}, vdim={vdim}")
        if isinstance(feature_map, str):
            if feature_map not in FEATURE_MAPS:
                raise ConfigError(f"unknown feature_map {feature_map!r}; choose one of {sorted(FEATURE_MAPS)} "
                                  "or pass a callable")
            self.feature_map_name = feature_map
            self._phi: FeatureMap = FEATURE_MAPS[feature_map]
        elif callable(feature_map):
            self.feature_map_name = getattr(feature_map, "__name__", "custom")
            self._phi = feature_map
        else:
            raise ConfigError(f"feature_map must be a name or a callable, not {type(feature_map).__name__}")
        factory = {"device": device, "dtype": dtype}
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, embed_dim // num_heads
        self.kdim = self.vdim = embed_dim
        self.dropout, self.batch_first, self.eps, self.chunk_size = float(dropout), bool(batch_first), float(eps), chunk_size
        # torch's TransformerEncoderLayer / TransformerEncoder take a fused *softmax* fast path (reading
        # in_proj_weight directly) when self_attn._qkv_same_embed_dim is True; False keeps them calling forward().
        self._qkv_same_embed_dim = False
        # the last attn_mask read (a weak reference: a freed mask never matches), its version and its verdict
        self._checked_mask: tuple[weakref.ref[Tensor], int | None, bool] | None = None
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim, **factory))
        if bias:
            self.in_proj_bias: nn.Parameter | None = nn.Parameter(torch.empty(3 * embed_dim, **factory))
        else:
            self.register_parameter("in_proj_bias", None)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias, **factory)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        """nn.MultiheadAttention's initialisation: Xavier-uniform input projection, zero biases."""
        nn.init.xavier_uniform_(self.in_proj_weight)
        if self.in_proj_bias is not None:
            nn.init.zeros_(self.in_proj_bias)
        if self.out_proj.bias is not None:
            nn.init.zeros_(self.out_proj.bias)

    @classmethod
    def from_multihead(cls, mha: nn.MultiheadAttention, **kwargs: object) -> LinearAttention:
        """A LinearAttention with the shape, options and a copy of the weights of ``mha`` (left unchanged).

        ``kwargs`` (``feature_map``, ``eps``, ``chunk_size``) are passed on. The outputs differ from
        ``mha``'s (another attention function): fine-tune the model after the swap.

        Raises:
            ConfigError: ``mha`` is not an ``nn.MultiheadAttention``, or uses options this class lacks.
        """
        if not isinstance(mha, nn.MultiheadAttention):
            raise ConfigError(f"from_multihead needs an nn.MultiheadAttention, not {type(mha).__name__}")
        if not mha._qkv_same_embed_dim or mha.bias_k is not None or mha.add_zero_attn:
            raise ConfigError("from_multihead supports MultiheadAttention without kdim/vdim, add_bias_kv or "
                              "add_zero_attn")
        ref = mha.in_proj_weight
        new = cls(mha.embed_dim, mha.num_heads, dropout=mha.dropout, bias=mha.in_proj_bias is not None,
                  batch_first=mha.batch_first, device=ref.device, dtype=ref.dtype, **kwargs)  # type: ignore[arg-type]
        new.load_state_dict(mha.state_dict())
        new.train(mha.training)
        return new

    def __getstate__(self) -> dict[str, object]:
        """The module's state for pickling (``torch.save(module)``, deepcopy) without the mask cache."""
        state = self.__dict__.copy()
        state["_checked_mask"] = None
        return state

    def extra_repr(self) -> str:
        return (f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, feature_map={self.feature_map_name!r}, "
                f"dropout={self.dropout}, batch_first={self.batch_first}")

    # ------------------------------------------------------------------------------------------- forward

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = False,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, None]:
        """Attend from ``query`` to ``key``/``value``; ``nn.MultiheadAttention.forward``'s arguments in its order.

        Args:
            query: ``[B, L, E]`` (batch_first), ``[L, B, E]`` (otherwise) or unbatched ``[L, E]``.
            key: ``[B, S, E]`` / ``[S, B, E]`` / ``[S, E]``.
            value: the same shape as ``key`` (the same length ``S``).
            key_padding_mask: ``[B, S]`` (``[S]`` unbatched), bool with True = ignore this key, or float
                with ``-inf`` = ignore and 0 = keep (the form torch's transformer layers pass on). Ignored
                keys have no effect at all on the output.
            need_weights: must be False: the attention matrix is never formed (True raises ConfigError).
            attn_mask: None, or the causal mask ``[L, L]``: bool (True above the diagonal, as
                ``torch.triu(torch.ones(L, L, dtype=torch.bool), 1)``) or float (``-inf`` above the
                diagonal, 0 elsewhere, as ``nn.Transformer.generate_square_subsequent_mask(L)``). Any
                other mask raises ConfigError: kernel attention cannot apply an arbitrary mask in linear time.
                Reading a mask costs ``O(L^2)``, once per mask tensor (the verdict is cached); with
                ``is_causal=True`` it is not read at all. Prefer ``is_causal=True`` alone.
            average_attn_weights: accepted for compatibility; there are no weights to average.
            is_causal: position ``t`` attends to positions ``<= t`` only (needs ``L == S``). Unlike
                ``nn.MultiheadAttention`` it needs no ``attn_mask``; given one too, the mask is trusted to be
                the causal mask and not read, as ``nn.MultiheadAttention`` documents for this hint.

        Returns:
            ``(output, None)``: output in the query's layout with ``E`` features, dtype of the inputs.

        Raises:
            ConfigError: shapes that do not fit, ``need_weights=True``, or an unsupported mask.
        """
        if need_weights:
            raise ConfigError("LinearAttention never forms the attention matrix, so it has no weights to return; "
                              "call it with need_weights=False")
        if query.is_nested or key.is_nested or value.is_nested:
            raise ConfigError("LinearAttention does not take nested tensors; nn.TransformerEncoder makes them when "
                              "it was built around nn.MultiheadAttention: build it with enable_nested_tensor=False, "
                              "or put LinearAttention in the layer before building the encoder")
        unbatched = query.dim() == 2
        q, k, v = (t.unsqueeze(0) if unbatched else (t if self.batch_first else t.transpose(0, 1))
                   for t in (query, key, value))
        self._check_inputs(query, q, k, v)
        batch, length, source = q.shape[0], q.shape[1], k.shape[1]
        keep = self._keep_mask(key_padding_mask, unbatched, batch, source)
        causal = self._causal(attn_mask, is_causal, length, source)

        if query is key and key is value:  # self-attention: one fused projection, as nn.MultiheadAttention does
            q, k, v = F.linear(q, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        else:
            w_q, w_k, w_v = self.in_proj_weight.chunk(3)
            b_q, b_k, b_v = self.in_proj_bias.chunk(3) if self.in_proj_bias is not None else (None, None, None)
            q, k, v = F.linear(q, w_q, b_q), F.linear(k, w_k, b_k), F.linear(v, w_v, b_v)
        heads = (batch, -1, self.num_heads, self.head_dim)
        q = self._phi(q.reshape(heads).transpose(1, 2))                      # [B, H, L, d]
        k = self._phi(k.reshape(heads).transpose(1, 2))                      # [B, H, S, d]
        v = v.reshape(heads).transpose(1, 2)                                 # [B, H, S, d]
        if keep is not None:
            visible = keep[:, None, :, None]                                  # [B, 1, S, 1]
            k = torch.where(visible, k, torch.zeros((), dtype=k.dtype, device=k.device))
            v = torch.where(visible, v, torch.zeros((), dtype=v.dtype, device=v.device))
        out = self._causal_attention(q, k, v) if causal else self._global_attention(q, k, v)
        out = F.dropout(out, self.dropout, self.training)
        out = self.out_proj(out.transpose(1, 2).reshape(batch, length, self.embed_dim))
        if unbatched:
            return out.squeeze(0), None
        return (out if self.batch_first else out.transpose(0, 1)), None

    def _global_attention(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Every query sees every key: ``phi(Q) (phi(K)^T V)`` over ``phi(Q) phi(K)^T 1``; ``[B, H, L, d]``."""
        kv = k.transpose(-2, -1) @ v                                         # [B, H, d, d]
        norm = q @ k.sum(dim=2).unsqueeze(-1)                                # [B, H, L, 1]
        return (q @ kv) / (norm + self.eps)

    def _causal_attention(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Query ``t`` sees keys ``<= t``: exact products inside each chunk, prefix-summed states between chunks."""
        batch, heads, length, dim = q.shape
        size = min(self.chunk_size, length)
        chunks = -(-length // size)
        pad = chunks * size - length
        if pad:  # zero keys and values at the end contribute nothing; the padded queries are dropped
            q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
        q, k, v = (t.view(batch, heads, chunks, size, dim) for t in (q, k, v))
        above = torch.ones(size, size, dtype=torch.bool, device=q.device).triu(1)
        scores = torch.where(above, q.new_zeros(()), q @ k.transpose(-2, -1))  # [B, H, C, size, size], lower
        num, norm = scores @ v, scores.sum(-1, keepdim=True)
        if chunks > 1:
            state = k.transpose(-2, -1) @ v                                  # [B, H, C, d, d] per chunk
            zsum = k.sum(dim=-2)                                             # [B, H, C, d]
            # exclusive prefix sums: chunk c sees the states of chunks < c
            state = F.pad(state.cumsum(dim=2)[:, :, :-1], (0, 0, 0, 0, 1, 0))
            zsum = F.pad(zsum.cumsum(dim=2)[:, :, :-1], (0, 0, 1, 0))
            num = num + q @ state
            norm = norm + q @ zsum.unsqueeze(-1)
        out = num / (norm + self.eps)
        return out.view(batch, heads, chunks * size, dim)[:, :, :length]

    # ------------------------------------------------------------------------------------------- checks

    def _check_inputs(self, query: Tensor, q: Tensor, k: Tensor, v: Tensor) -> None:
        if query.dim() not in (2, 3) or not q.dim() == k.dim() == v.dim() == 3:
            raise ConfigError(f"query, key and value must all be 3-D (batched) or all 2-D (unbatched); got "
                              f"{query.dim()}-D query and shapes {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
        for name, t in (("query", q), ("key", k), ("value", v)):
            if t.shape[-1] != self.embed_dim:
                raise ConfigError(f"{name} has {t.shape[-1]} features; this attention takes embed_dim={self.embed_dim}")
        if k.shape[:2] != v.shape[:2] or q.shape[0] != k.shape[0]:
            layout = "[batch, seq, E]" if self.batch_first else "[seq, batch, E]"
            raise ConfigError(f"query, key and value disagree in batch or key length (read as {layout}): "
                              f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")

    @staticmethod
    def _keep_mask(mask: Tensor | None, unbatched: bool, batch: int, source: int) -> Tensor | None:
        """``[B, S]`` bool, True = a key that counts, from a key padding mask; None when every key counts."""
        if mask is None:
            return None
        mask = mask.unsqueeze(0) if unbatched else mask
        if tuple(mask.shape) != (batch, source):
            raise ConfigError(f"key_padding_mask must have shape {(batch, source)} (batch, key length), "
                              f"not {tuple(mask.shape)}")
        return ~_blocked(mask, "key_padding_mask", "0 (keep) and -inf (ignore)")

    def _causal(self, attn_mask: Tensor | None, is_causal: bool, length: int, source: int) -> bool:
        """Whether to use the causal form, after checking that ``attn_mask`` is absent, empty or causal.

        With ``is_causal=True`` the mask is taken to be the causal one without reading it (the hint
        ``nn.MultiheadAttention`` documents); otherwise it is read once (``O(L^2)``) and the verdict is kept
        for as long as the same, unmodified mask tensor comes back.
        """
        causal = bool(is_causal)
        if attn_mask is not None:
            if tuple(attn_mask.shape) != (length, source):
                raise ConfigError(f"LinearAttention takes only a 2-D causal attn_mask of shape {(length, source)}, "
                                  f"not {tuple(attn_mask.shape)}; per-head or per-batch masks are not supported")
            if not causal:
                try:
                    version: int | None = attn_mask._version
                except RuntimeError:  # an inference-mode tensor has no version counter: read it every time
                    version = None
                last = self._checked_mask
                if version is not None and last is not None and last[0]() is attn_mask and last[1] == version:
                    causal = last[2]
                else:
                    causal = self._read_mask(attn_mask, length, source)
                    self._checked_mask = (weakref.ref(attn_mask), version, causal)
        if causal and length != source:
            raise ConfigError(f"causal attention needs as many queries as keys, got {length} and {source}")
        return causal

    @staticmethod
    def _read_mask(attn_mask: Tensor, length: int, source: int) -> bool:
        """True for the causal mask, False for a mask that blocks nothing; ConfigError for any other."""
        blocked = _blocked(attn_mask, "attn_mask", "0 and -inf (the causal mask)")
        if not bool(blocked.any()):
            return False
        upper = torch.ones(length, source, dtype=torch.bool, device=blocked.device).triu(1)
        if length != source or not torch.equal(blocked, upper):
            raise ConfigError("LinearAttention supports only the causal attn_mask (every position above the "
                              "diagonal blocked, nothing else): pass is_causal=True, or use "
                              "nn.MultiheadAttention for other masks")
        return True


def _blocked(mask: Tensor, name: str, allowed: str) -> Tensor:
    """Where a bool or float (0 / -inf) mask blocks attention, as a bool tensor; ConfigError for other masks."""
    if mask.dtype == torch.bool:
        return mask
    if not mask.is_floating_point():
        raise ConfigError(f"{name} must be bool or float, not {mask.dtype}")
    blocked = torch.isneginf(mask)
    if bool((mask[~blocked] != 0).any()):
        raise ConfigError(f"a float {name} may only hold {allowed}: kernel attention cannot add arbitrary biases "
                          "to its scores")
    return blocked
