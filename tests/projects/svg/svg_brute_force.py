"""Token-level numpy constructions (seq x seq, loops where clearer) that the SVG tests check the real code against.

Written from the definitions in the paper and the module docstrings, not from the code under test: positions are
computed from (frame, patch) pairs one token at a time, masks pair by pair.
"""

import numpy as np


def token_coordinates(layout):
    """Per frame-major sequence position: (is_text, frame, patch), frame/patch -1 for text."""
    is_text, frames, patches = [], [], []
    video_start = layout.text_tokens if layout.text_first else 0
    for s in range(layout.seq_len):
        v = s - video_start
        if 0 <= v < layout.num_frames * layout.frame_tokens:
            is_text.append(False)
            frames.append(v // layout.frame_tokens)
            patches.append(v % layout.frame_tokens)
        else:
            is_text.append(True)
            frames.append(-1)
            patches.append(-1)
    return np.array(is_text), np.array(frames), np.array(patches)


def token_major_source(layout):
    """`perm` with token_major[k] = frame_major[perm[k]]: text stays, video goes patch by patch, frames inside."""
    is_text, frames, patches = token_coordinates(layout)
    video = [s for s in range(layout.seq_len) if not is_text[s]]
    by_patch = sorted(video, key=lambda s: (patches[s], frames[s]))
    perm = np.arange(layout.seq_len)
    perm[np.flatnonzero(~is_text)] = by_patch
    return perm


def band_token_mask(layout, band):
    """[S, S]: text row or column, or video indices (in the current order) at most `band` apart."""
    is_text, _, _ = token_coordinates(layout)
    video_index = np.cumsum(~is_text) - 1
    mask = np.zeros((layout.seq_len, layout.seq_len), bool)
    for i in range(layout.seq_len):
        for j in range(layout.seq_len):
            mask[i, j] = is_text[i] or is_text[j] or abs(video_index[i] - video_index[j]) <= band
    return mask


def temporal_token_mask(layout, band):
    """[S, S] in frame-major positions: text, or |(patch_i - patch_j) * F + (frame_i - frame_j)| <= band."""
    is_text, frames, patches = token_coordinates(layout)
    mask = np.zeros((layout.seq_len, layout.seq_len), bool)
    for i in range(layout.seq_len):
        for j in range(layout.seq_len):
            distance = abs((patches[i] - patches[j]) * layout.num_frames + frames[i] - frames[j])
            mask[i, j] = is_text[i] or is_text[j] or distance <= band
    return mask


def any_per_block(mask, block_q, block_kv):
    """Token mask -> block mask: a block is active when any of its token pairs is."""
    rows = -(-mask.shape[0] // block_q)
    cols = -(-mask.shape[1] // block_kv)
    out = np.zeros((rows, cols), bool)
    for r in range(rows):
        for c in range(cols):
            out[r, c] = mask[r * block_q:(r + 1) * block_q, c * block_kv:(c + 1) * block_kv].any()
    return out


def blocks_to_tokens(block_mask, seq_len, block_q, block_kv):
    positions = np.arange(seq_len)
    return np.asarray(block_mask)[positions // block_q][:, positions // block_kv]


def masked_attention(q, k, v, token_mask):
    """float64 softmax attention; q/k/v [B, S, H, D], token_mask broadcastable to [B, H, S, S]."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
    logits = np.where(token_mask, logits, -np.inf)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    return np.einsum("bhqk,bkhd->bqhd", weights, v)


def planted_qkv(layout, classes, head_dim, strength, seed):
    """q, k, v [B, S, H, D] whose logits favour the same frame (class 0, spatial) or the same patch (1, temporal).

    q = k = strength * onehot(frame or patch) + noise for video tokens; text tokens get noise only; v is random.
    """
    classes = np.asarray(classes)
    batch, heads = classes.shape
    rng = np.random.default_rng(seed)
    is_text, frames, patches = token_coordinates(layout)
    q = rng.normal(size=(batch, layout.seq_len, heads, head_dim)) * 0.1
    k = q + rng.normal(size=q.shape) * 0.1
    v = rng.normal(size=q.shape)
    for b in range(batch):
        for h in range(heads):
            key = patches if classes[b, h] else frames
            for s in np.flatnonzero(~is_text):
                q[b, s, h, key[s]] += strength
                k[b, s, h, key[s]] += strength
    return tuple(x.astype(np.float32) for x in (q, k, v))


def with_sink(mask, layout, sink_tokens):
    """`mask` [S, S] plus the columns of the first `sink_tokens` video tokens (in the current order), for all rows."""
    is_text, _, _ = token_coordinates(layout)
    video_index = np.cumsum(~is_text) - 1
    out = mask.copy()
    for j in range(layout.seq_len):
        if not is_text[j] and video_index[j] < sink_tokens:
            out[:, j] = True
    return out


def official_candidates(layout, frames, sink_tokens):
    """(spatial, temporal) [S, S] as the official code builds its profiling masks (video only, no text): blocks of
    128 video tokens within `floor(frames * frame_tokens / 128)` blocks of each other, the first `sink_tokens`
    columns; for temporal the same matrix built in token-major order and moved to frame-major positions (the
    official reshape(frame_tokens, frames, ...).permute(1, 0, 3, 2)), so both come back in frame-major positions."""
    n = layout.video_tokens
    block, width = 128, int(frames * layout.frame_tokens // 128)
    pixel = np.zeros((n, n), bool)
    pixel[:, :sink_tokens] = True
    for i in range(-(-n // block)):
        for j in range(-(-n // block)):
            if abs(i - j) < width:
                pixel[i * block:(i + 1) * block, j * block:(j + 1) * block] = True
    f, p = layout.num_frames, layout.frame_tokens
    temporal = pixel.reshape(p, f, p, f).transpose(1, 0, 3, 2).reshape(n, n)
    return pixel, temporal
