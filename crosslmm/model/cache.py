"""Generation cache that also keeps the T2V cross-attention keys/values of the original visual tokens."""

from __future__ import annotations

import torch
from transformers import DynamicCache

from crosslmm.model.configuration import validate_decode_memory


class CrossLMMCache(DynamicCache):
    """A ``DynamicCache`` for the decoder's self-attention plus, per cross-attention layer, the T2V keys and
    values computed once at prefill (as HF mllama keeps its cross-attention states).

    ``cross_kv[layer]`` holds (keys, values), each (B, KVH, F_max * N, head_dim), padded per sample;
    ``frame_counts`` (B,) says how many frames of each row are real, each with ``patches_per_frame``
    keys. Generated tokens attend to all
    real frames of their sample, so decoding never re-encodes the video.

    Bounded decode (``decode_memory="topk_frames"``): ``selected_kv[layer]`` holds (keys, values, kept),
    the K/V of the frames the prompt attended to most, (B, KVH, m * N, hd), time order, ``kept`` (B,) real
    frames per row; one-token decode steps attend to those only. Once a one-shot prefill has selected, the
    full ``cross_kv`` of that layer is dropped, unless ``keep_full_memory`` (streaming: frames and
    questions still to come need every frame, and each question re-ranks). ``decode_memory`` /
    ``decode_frames`` given here override the model config's for this cache (a generate-time setting).

    ``sample_state``: names of further per-sample tensors (B, ...) a subclass keeps (a decoder variant's
    state between steps); each starts as None and follows the rows through reorder, select, repeat and reset.
    """

    sample_state: tuple[str, ...] = ()

    def __init__(
        self,
        *args,
        decode_memory: str | None = None,
        decode_frames: int | None = None,
        keep_full_memory: bool = False,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        if decode_memory is not None or decode_frames is not None:
            validate_decode_memory(decode_memory or "topk_frames", decode_frames or 1)
        self.decode_memory, self.decode_frames = decode_memory, decode_frames
        self.keep_full_memory = keep_full_memory
        self.selected_kv: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self.cross_kv: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._capacity: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # streaming: storage of cross_kv
        self.frame_counts: torch.Tensor | None = None
        self.patches_per_frame = 0
        for name in self.sample_state:
            setattr(self, name, None)

    def set_visual_memory(self, frame_counts: torch.Tensor, patches_per_frame: int) -> None:
        self.frame_counts = frame_counts
        self.patches_per_frame = patches_per_frame

    @property
    def has_visual_memory(self) -> bool:
        return self.frame_counts is not None

    def store_cross(self, layer: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        self.cross_kv[layer] = (keys, values)
        self._capacity.pop(layer, None)
        self.selected_kv.pop(layer, None)

    def store_selection(
        self, layer: int, keys: torch.Tensor, values: torch.Tensor, kept: torch.Tensor, drop_full: bool
    ) -> None:
        """Keep ``layer``'s selected frames for decoding; ``drop_full`` frees the full memory (one-shot)."""
        self.selected_kv[layer] = (keys, values, kept)
        if drop_full and not self.keep_full_memory:
            self.cross_kv.pop(layer, None)
            self._capacity.pop(layer, None)

    def cross_nbytes(self) -> int:
        """Bytes of the cross-attention K/V this cache holds for decoding (full and selected)."""
        tensors = [t for kv in self.cross_kv.values() for t in kv]
        tensors += [t for k, v, _ in self.selected_kv.values() for t in (k, v)]
        return sum(t.numel() * t.element_size() for t in tensors)

    def append_cross(self, layer: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Append one sample's new keys/values (1, KVH, M_new, hd) to ``layer``'s (streaming).

        The storage grows by doubling, so appending a frame costs the same however many came before
        (amortised); ``cross_kv[layer]`` stays a view of the filled part.
        """
        self.selected_kv.pop(layer, None)  # new frames: the next prompt re-ranks
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
        self.selected_kv = {k: tuple(fn(t) for t in kv) for k, kv in self.selected_kv.items()}
        self._capacity = {}
        for name in ("frame_counts", *self.sample_state):
            if getattr(self, name) is not None:
                setattr(self, name, fn(getattr(self, name)))

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
        self.selected_kv = {}
        self._capacity = {}
        for name in ("frame_counts", *self.sample_state):
            setattr(self, name, None)
