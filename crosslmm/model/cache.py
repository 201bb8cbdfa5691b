"""Generation cache that also keeps the T2V cross-attention keys/values of the original visual tokens."""

from __future__ import annotations

import torch
from transformers import DynamicCache


class CrossLMMCache(DynamicCache):
    """A ``DynamicCache`` for the decoder's self-attention plus, per cross-attention layer, the T2V keys and
    values computed once at prefill (as HF mllama keeps its cross-attention states).

    ``cross_kv[layer]`` holds (keys, values), each (B, KVH, F_max * N, head_dim), padded per sample;
    ``frame_counts`` (B,) says how many frames of each row are real, each with ``patches_per_frame``
    keys. Generated tokens attend to all
    real frames of their sample, so decoding never re-encodes the video.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.cross_kv: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._capacity: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # streaming: storage of cross_kv
        self.frame_counts: torch.Tensor | None = None
        self.patches_per_frame = 0

    def set_visual_memory(self, frame_counts: torch.Tensor, patches_per_frame: int) -> None:
        self.frame_counts = frame_counts
        self.patches_per_frame = patches_per_frame

    @property
    def has_visual_memory(self) -> bool:
        return self.frame_counts is not None

    def store_cross(self, layer: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        self.cross_kv[layer] = (keys, values)
        self._capacity.pop(layer, None)

    def append_cross(self, layer: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Append one sample's new keys/values (1, KVH, M_new, hd) to ``layer``'s (streaming).

        The storage grows by doubling, so appending a frame costs the same however many came before
        (amortised); ``cross_kv[layer]`` stays a view of the filled part.
        """
        if layer not in self.cross_kv:
            self.store_cross(layer, keys, values)
            return
        old_k, old_v = self.cross_kv[layer]
        filled, new = old_k.shape[2], keys.shape[2]
        store_k, store_v = self._capacity.get(layer, (old_k, old_v))
        if filled + new > store_k.shape[2]:
            size = max(2 * store_k.shape[2], filled + new)
            store_k = torch.cat(
                [old_k, old_k.new_empty((*old_k.shape[:2], size - filled, old_k.shape[3]))], 2
            )
            store_v = torch.cat(
                [old_v, old_v.new_empty((*old_v.shape[:2], size - filled, old_v.shape[3]))], 2
            )
            self._capacity[layer] = (store_k, store_v)
        store_k[:, :, filled : filled + new] = keys
        store_v[:, :, filled : filled + new] = values
        self.cross_kv[layer] = (store_k[:, :, : filled + new], store_v[:, :, : filled + new])

    def _map_cross(self, fn) -> None:
        self.cross_kv = {k: (fn(key), fn(val)) for k, (key, val) in self.cross_kv.items()}
        self._capacity = {}
        if self.frame_counts is not None:
            self.frame_counts = fn(self.frame_counts)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        super().reorder_cache(beam_idx)
        self._map_cross(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        super().batch_select_indices(indices)
        self._map_cross(lambda t: t[indices.to(t.device)])

    def batch_repeat_interleave(self, repeats: int) -> None:
        super().batch_repeat_interleave(repeats)
        self._map_cross(lambda t: t.repeat_interleave(repeats, dim=0))

    def reset(self) -> None:
        super().reset()
        self.cross_kv = {}
        self._capacity = {}
        self.frame_counts = None
