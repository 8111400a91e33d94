"""A PyTorch reference of lattice's decoder, in lattice's parameter names and layouts.

Written with plain torch ops (autograd gives the gradients); used by the oracle test and by the
CPU benchmark against PyTorch. Nothing here is imported by lattice itself.
"""
import math

import torch
import torch.nn.functional as F


def padded(v, m):
    return (v + m - 1) // m * m


def make_weights(c, gen):
    """Random weights in lattice's names and layouts (model/decoder.h)."""
    C, H = c["d_model"], c["n_head"]
    K = c["n_kv_head"] or H
    D = C // H
    llama = c["arch"] == "llama"
    Fd = c["d_ff"] or 4 * C
    Vp = padded(c["vocab_size"], c["vocab_pad_multiple"])
    w = {}

    def rnd(*shape, std=0.1):
        return torch.randn(*shape, generator=gen) * std

    w["wte"] = rnd(Vp, C)
    w["wte"][c["vocab_size"]:] = 0
    if not llama:
        w["wpe"] = rnd(c["seq_len"], C)
    for l in range(c["n_layer"]):
        p = f"h.{l}."
        for n in ("norm1", "norm2"):
            w[p + n + ".weight"] = 1 + rnd(C)
            if not llama:
                w[p + n + ".bias"] = rnd(C)
        dims = {"attn.qkv": ((H + 2 * K) * D, C), "attn.proj": (C, H * D),
                "mlp.fc": ((2 if llama else 1) * Fd, C), "mlp.proj": (C, Fd)}
        for n, (o, i) in dims.items():
            w[p + n + ".weight"] = rnd(o, i)
            if not llama:
                w[p + n + ".bias"] = rnd(o)
    w["norm_f.weight"] = 1 + rnd(C)
    if not llama:
        w["norm_f.bias"] = rnd(C)
    if not c["tied"]:
        w["lm_head"] = rnd(Vp, C)
        w["lm_head"][c["vocab_size"]:] = 0
    return {k: v.contiguous() for k, v in w.items()}


def rope(x, theta):
    # x (B, heads, T, D), Hugging Face rotate-half convention.
    D, T = x.shape[-1], x.shape[-2]
    inv_freq = 1.0 / (theta ** (torch.arange(0, D, 2).float() / D))
    freqs = torch.outer(torch.arange(T).float(), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos(), emb.sin()
    x1, x2 = x[..., : D // 2], x[..., D // 2:]
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


def forward_loss(w, c, inputs, targets, store=None, attend=None):
    """Mean cross-entropy over the real vocabulary (padding columns excluded).

    store: None, or a function applied to every activation lattice's mixed precision stores
    (kernels/storage_rounding_backend.h), e.g. a rounding to bf16 that also rounds the gradient
    in the backward (tests/oracle/precision_oracle_test.py). None computes the plain fp32 ops.
    attend: None, or a function (q, k, v, causal mask) of (B, H, T, D) tensors returning the
    attention output, replacing the softmax written here.
    """
    s = store if store is not None else (lambda t: t)
    llama = c["arch"] == "llama"
    B, T = inputs.shape
    C, H = c["d_model"], c["n_head"]
    K = c["n_kv_head"] or H
    D = C // H
    Fd = c["d_ff"] or 4 * C
    eps = 1e-5

    def norm(x, name):
        if llama:
            var = x.pow(2).mean(-1, keepdim=True)
            return s(x * torch.rsqrt(var + eps) * w[name + ".weight"])
        return s(F.layer_norm(x, (C,), w[name + ".weight"], w[name + ".bias"], eps))

    def linear(x, name):
        return s(F.linear(x, w[name + ".weight"], None if llama else w[name + ".bias"]))

    x = w["wte"][inputs]
    if not llama:
        x = x + w["wpe"][:T]
    x = s(x)
    mask = torch.ones(T, T, dtype=torch.bool).tril()
    for l in range(c["n_layer"]):
        p = f"h.{l}."
        qkv = linear(norm(x, p + "norm1"), p + "attn.qkv")
        q, k, v = qkv.split([H * D, K * D, K * D], dim=-1)
        q = q.view(B, T, H, D).transpose(1, 2)
        k = k.view(B, T, K, D).transpose(1, 2)
        v = v.view(B, T, K, D).transpose(1, 2)
        if llama:
            q, k = s(rope(q, c["rope_theta"])), s(rope(k, c["rope_theta"]))
        k = k.repeat_interleave(H // K, dim=1)
        v = v.repeat_interleave(H // K, dim=1)
        if attend is None:
            att = (q @ k.transpose(-1, -2)) / math.sqrt(D)
            att = att.masked_fill(~mask, float("-inf")).softmax(-1)
            o = att @ v
        else:
            o = attend(q, k, v, mask)
        y = s(o.transpose(1, 2).reshape(B, T, H * D))
        x = s(x + linear(y, p + "attn.proj"))
        if llama:
            h = linear(norm(x, p + "norm2"), p + "mlp.fc")
            gate, up = h.split([Fd, Fd], dim=-1)
            a = s(F.silu(gate) * up)
        elif store is None:
            a = F.gelu(linear(norm(x, p + "norm2"), p + "mlp.fc"), approximate="tanh")
        else:
            # lattice stores the fc product; its GELU pass adds the bias, stores the sum and the
            # GELU of the unrounded sum; the GELU's backward reads the stored (rounded) sum.
            pre = s(F.linear(norm(x, p + "norm2"), w[p + "mlp.fc.weight"])) + w[p + "mlp.fc.bias"]
            h = s(pre)
            fp32_sum = (F.gelu(pre, approximate="tanh") - F.gelu(h, approximate="tanh")).detach()
            a = s(F.gelu(h, approximate="tanh") + fp32_sum)
        x = s(x + linear(a, p + "mlp.proj"))
    x = norm(x, "norm_f")
    logits = x @ (w["wte"] if c["tied"] else w["lm_head"]).T
    V = c["vocab_size"]
    return F.cross_entropy(logits[..., :V].reshape(-1, V), targets.reshape(-1))
