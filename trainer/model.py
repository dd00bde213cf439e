"""The multimodal model: a decoder-only transformer fed by image and waveform encoders.

Text is a Llama-style decoder (RoPE, RMSNorm, SwiGLU, grouped-query attention through
``F.scaled_dot_product_attention``). Images and waveforms are encoded into the same width and
written into the token stream where the tokenizer put placeholder tokens between modality
markers (``<img> <img_patch>... </img>``, ``<wav> <wav_patch>... </wav>``), so one causal
decoder reads every modality in order.

Notation in shape comments: B batch, T tokens, D model width, H heads, K kv heads, E head
dim, S slices, P patches per slice, C channels, N waveform patches, V vocabulary.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from trainer.config import ImageEncoderConfig, ModelConfig, WaveformEncoderConfig
from trainer.data.tokenizer import IMAGE_PATCH_ID, WAVE_PATCH_ID

IGNORE_INDEX = -100  # label value that carries no loss (prompt, patches, padding)


class RMSNorm(nn.Module):
    """Root-mean-square layer norm, computed in float32 for bf16 stability."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return xf.type_as(x) * self.weight


def rope_tables(
    seq_len: int, head_dim: int, theta: float, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables ``[T, E/2]`` in float32 for rotary position embedding."""
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=device).float() / head_dim))
    pos = torch.arange(seq_len, device=device).float()
    freqs = torch.outer(pos, inv)  # [T, E/2]
    return freqs.cos(), freqs.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x [B, H, T, E]`` by position using the half-split convention."""
    half = x.shape[-1] // 2
    xf = x.float()
    x1, x2 = xf[..., :half], xf[..., half:]  # [B, H, T, E/2] each
    out = torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    return out.type_as(x)


class Attention(nn.Module):
    """Multi-head attention with grouped-query K/V and optional RoPE."""

    def __init__(self, dim: int, n_heads: int, n_kv_heads: int) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads = n_heads, n_kv_heads
        self.head_dim = dim // n_heads
        self.wq = nn.Linear(dim, n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(dim, n_kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(dim, n_kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(n_heads * self.head_dim, dim, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None,
        causal: bool,
    ) -> torch.Tensor:
        b, t, _ = x.shape  # x: [B, T, D]
        q = self.wq(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)  # [B, H, T, E]
        k = self.wk(x).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)  # [B, K, T, E]
        v = self.wv(x).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)  # [B, K, T, E]
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        out = F.scaled_dot_product_attention(
            q, k, v, is_causal=causal, enable_gqa=self.n_kv_heads != self.n_heads
        )  # [B, H, T, E]
        return self.wo(out.transpose(1, 2).reshape(b, t, -1))  # [B, T, D]


class FeedForward(nn.Module):
    """SwiGLU MLP: ``w2(silu(w1 x) * w3 x)``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    """Pre-norm transformer block; causal with RoPE in the decoder, bidirectional in encoders."""

    def __init__(
        self, dim: int, n_heads: int, n_kv_heads: int, hidden: int, eps: float, causal: bool
    ) -> None:
        super().__init__()
        self.causal = causal
        self.attn_norm = RMSNorm(dim, eps)
        self.attn = Attention(dim, n_heads, n_kv_heads)
        self.ffn_norm = RMSNorm(dim, eps)
        self.ffn = FeedForward(dim, hidden)

    def forward(
        self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), rope, self.causal)
        return x + self.ffn(self.ffn_norm(x))


def _run_blocks(
    blocks: nn.ModuleList,
    x: torch.Tensor,
    rope: tuple[torch.Tensor, torch.Tensor] | None,
    recompute: bool,
) -> torch.Tensor:
    for block in blocks:
        # Non-reentrant checkpointing works with DDP, FSDP2 and ZeRO-3 parameter hooks.
        x = checkpoint(block, x, rope, use_reentrant=False) if recompute else block(x, rope)
    return x


class ImageEncoder(nn.Module):
    """ViT-style encoder: 2D patches of each slice; a stack of slices is one sequence."""

    def __init__(self, cfg: ImageEncoderConfig, out_dim: int, eps: float) -> None:
        super().__init__()
        self.cfg = cfg
        self.grid = cfg.image_size // cfg.patch_size
        self.patch_embed = nn.Linear(cfg.patch_size**2, cfg.d_model, bias=False)
        self.patch_pos = nn.Parameter(torch.zeros(self.grid**2, cfg.d_model))
        self.slice_pos = nn.Parameter(torch.zeros(cfg.slices, cfg.d_model))
        self.blocks = nn.ModuleList(
            Block(cfg.d_model, cfg.n_heads, cfg.n_heads, cfg.ffn_hidden, eps, causal=False)
            for _ in range(cfg.n_layers)
        )
        self.norm = RMSNorm(cfg.d_model, eps)
        self.proj = nn.Linear(cfg.d_model, out_dim, bias=False)

    def forward(self, pixels: torch.Tensor, recompute: bool = False) -> torch.Tensor:
        """``pixels [B, S, R, R]`` normalised to about [0, 1] -> tokens ``[B, S*P, D]``."""
        b, s, _, _ = pixels.shape
        p, g = self.cfg.patch_size, self.grid
        x = pixels.reshape(b, s, g, p, g, p).permute(0, 1, 2, 4, 3, 5)  # [B, S, g, g, p, p]
        x = x.reshape(b, s, g * g, p * p)  # [B, S, P, p*p]
        x = self.patch_embed(x) + self.patch_pos + self.slice_pos[:, None, :]  # [B, S, P, De]
        x = x.reshape(b, s * g * g, -1)  # [B, S*P, De]
        x = _run_blocks(self.blocks, x, None, recompute)
        return self.proj(self.norm(x))  # [B, S*P, D]


class WaveformEncoder(nn.Module):
    """1D patch encoder: each time patch across all channels is one token."""

    def __init__(self, cfg: WaveformEncoderConfig, out_dim: int, eps: float) -> None:
        super().__init__()
        self.cfg = cfg
        self.patch_embed = nn.Linear(cfg.channels * cfg.patch_size, cfg.d_model, bias=False)
        self.pos = nn.Parameter(torch.zeros(cfg.tokens, cfg.d_model))
        self.blocks = nn.ModuleList(
            Block(cfg.d_model, cfg.n_heads, cfg.n_heads, cfg.ffn_hidden, eps, causal=False)
            for _ in range(cfg.n_layers)
        )
        self.norm = RMSNorm(cfg.d_model, eps)
        self.proj = nn.Linear(cfg.d_model, out_dim, bias=False)

    def forward(self, wave: torch.Tensor, recompute: bool = False) -> torch.Tensor:
        """``wave [B, C, L]`` (per-channel standardised) -> tokens ``[B, N, D]``."""
        b, c, length = wave.shape
        n, p = length // self.cfg.patch_size, self.cfg.patch_size
        x = wave.reshape(b, c, n, p).permute(0, 2, 1, 3).reshape(b, n, c * p)  # [B, N, C*p]
        x = self.patch_embed(x) + self.pos  # [B, N, De]
        x = _run_blocks(self.blocks, x, None, recompute)
        return self.proj(self.norm(x))  # [B, N, D]


class MultimodalLM(nn.Module):
    """Decoder-only LM whose input stream carries encoded images and waveforms."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.tok_embed = nn.Embedding(cfg.vocab_size, d)
        self.image_encoder = ImageEncoder(cfg.image, d, cfg.norm_eps) if cfg.image.enabled else None
        self.wave_encoder = (
            WaveformEncoder(cfg.waveform, d, cfg.norm_eps) if cfg.waveform.enabled else None
        )
        self.blocks = nn.ModuleList(
            Block(d, cfg.n_heads, cfg.n_kv_heads, cfg.ffn_hidden, cfg.norm_eps, causal=True)
            for _ in range(cfg.n_layers)
        )
        self.norm = RMSNorm(d, cfg.norm_eps)
        self.head = None if cfg.tie_embeddings else nn.Linear(d, cfg.vocab_size, bias=False)

    def init_value(self, name: str, shape: torch.Size, gen: torch.Generator) -> torch.Tensor:
        """Initial float32 value of parameter ``name``; advances ``gen`` like init_weights."""
        if name.endswith("norm.weight"):
            return torch.ones(shape)
        std = self.cfg.init_std
        if name.endswith(("wo.weight", "w2.weight")):
            # Residual projections scaled down so the stream's variance stays ~1.
            std = std / math.sqrt(2 * max(1, self.cfg.n_layers))
        return torch.randn(shape, generator=gen, dtype=torch.float32) * std

    def init_weights(self, seed: int) -> None:
        """Deterministic initialisation (normal ``init_std``; norms at one) from ``seed``.

        Values come from a CPU generator in parameter order, so every engine (and ZeRO-3's
        partitioned construction, see trainer/engines.py) starts from identical weights.
        """
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, param in self.named_parameters():
                param.copy_(self.init_value(name, param.shape, gen).to(param.dtype))

    def _splice(
        self,
        h: torch.Tensor,
        input_ids: torch.Tensor,
        feats: torch.Tensor,
        present: torch.Tensor | None,
        token_id: int,
    ) -> torch.Tensor:
        """Write ``feats[present]`` into ``h`` at the placeholder positions of ``token_id``
        (every row of ``feats`` when no mask is given)."""
        slots = (input_ids == token_id).unsqueeze(-1)  # [B, T, 1]
        chosen = (feats if present is None else feats[present]).to(h.dtype)  # [B', n, D]
        h = h.masked_scatter(slots, chosen)
        # Keeps every encoder parameter in the graph when no sample in this micro-batch has
        # the modality, so DDP/FSDP/ZeRO reductions see the same parameters on every rank.
        return h + 0.0 * feats.sum().to(h.dtype)

    def forward(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor | None = None,
        images: torch.Tensor | None = None,
        image_mask: torch.Tensor | None = None,
        waves: torch.Tensor | None = None,
        wave_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits ``[B, T, V]``, or with ``labels`` the summed token cross-entropy (scalar).

        ``input_ids, labels [B, T]``; ``images [B, S, R, R]`` with ``image_mask [B]`` saying
        which rows are real; ``waves [B, C, L]`` with ``wave_mask [B]``. The loss is a sum so
        the caller can normalise by the global token count of the whole optimizer step.
        """
        recompute = self.cfg.activation_checkpointing and self.training
        h = self.tok_embed(input_ids)  # [B, T, D]
        if self.image_encoder is not None and images is not None:
            feats = self.image_encoder(images.to(h.dtype), recompute)  # [B, S*P, D]
            h = self._splice(h, input_ids, feats, image_mask, IMAGE_PATCH_ID)
        if self.wave_encoder is not None and waves is not None:
            feats = self.wave_encoder(waves.to(h.dtype), recompute)  # [B, N, D]
            h = self._splice(h, input_ids, feats, wave_mask, WAVE_PATCH_ID)
        rope = rope_tables(
            input_ids.shape[1], self.cfg.d_model // self.cfg.n_heads, self.cfg.rope_theta, h.device
        )
        h = _run_blocks(self.blocks, h, rope, recompute)
        h = self.norm(h)
        weight = self.tok_embed.weight if self.head is None else self.head.weight
        logits = F.linear(h, weight)  # [B, T, V]
        if labels is None:
            return logits
        return F.cross_entropy(
            logits.float().flatten(0, 1),  # [B*T, V]
            labels.flatten(),  # [B*T]
            ignore_index=IGNORE_INDEX,
            reduction="sum",
        )


def build_model(
    cfg: ModelConfig, device: torch.device | str = "cpu", seed: int = 0
) -> MultimodalLM:
    """Construct the model on ``device``; on ``meta`` nothing is allocated or initialised."""
    device = torch.device(device)
    with device:
        model = MultimodalLM(cfg)
    if device.type != "meta":
        model.init_weights(seed)
    return model


def num_params(model: nn.Module) -> int:
    """Number of parameter elements (works on the meta device)."""
    return sum(p.numel() for p in model.parameters())
