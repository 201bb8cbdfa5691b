"""Answer questions about a video while it is still arriving.

    session = StreamingSession(model, processor)
    session.add_frames(frames[:8])          # (T, H, W, 3) uint8; encoded once, cached
    session.ask("What is happening?")       # generates over everything seen so far
    session.add_frames(frames[8:16])        # the conversation goes on
    session.ask("And now?")

Each ``add_frames`` runs the vision tower on the new frames only and continues the prefill: their pooled
tokens go into the decoder's KV cache and their T2V keys/values are appended to the cross-attention cache
(:meth:`CrossLMMCache.append_cross`), so a frame costs the same however many came before. The token layout
is the one the processor gives the offline model for the same conversation (each run of frames is one
``<video>`` in the current user turn, the video first), so the streamed logits equal the offline ones.
Frame-scope V2V only: with ``v2v_scope="video"`` a pooled token would need frames that have not arrived.
With ``decode_memory="topk_frames"`` the session keeps every frame's T2V keys/values and each ``ask`` ranks
all frames seen so far again; only its generation steps are bounded (docs/streaming.md, "Bounded decode").
After an answer the session holds the processor's ids for the rendered conversation (as HF chat pipelines
re-tokenise it), and its cache only what the offline model would compute for them: a generated token stays
cached where it agrees with those ids and was decoded over every frame; the rest is fed again.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

# generate() arguments a session passes itself: its tokens, its cache, its frames (already in the cache)
_SESSION_OWNS = frozenset(
    {"input_ids", "inputs_embeds", "attention_mask", "cache", "past_key_values", "use_cache"}
    | {"pixel_values_videos", "video_frame_counts"}
)


class StreamingSession:
    """One conversation (a batch of one) over a growing video; see the module docstring."""

    def __init__(self, model, processor, tokens_per_frame: int | None = None):
        """``tokens_per_frame``: the session's budget for every frame (an elastic model's; None: the
        processor's default)."""
        if model.config.v2v and model.config.v2v_scope == "video":
            raise ValueError("v2v_scope='video' cannot stream: a pooled token would need frames not yet seen")
        self.model, self.processor = model, processor
        self.tokens_per_frame = processor.budget(tokens_per_frame)
        model.config.check_budget(self.tokens_per_frame, source="this streaming session's tokens_per_frame")
        # the model's cache class: a baseline's may keep more (the merge baseline: its tokens' sizes)
        cache_class = model.model.cache_class
        self.cache = cache_class(config=model.config.text_config, keep_full_memory=True)  # re-rank per ask
        self.messages: list[dict] = []  # the conversation so far, typed content as the processor renders it
        self.ids: list[int] = []  # every token of the conversation the model has seen or must see next
        self._rendered = ""  # the conversation's text (``<video>`` unexpanded) whose tokens are in ids
        self.frames_seen = 0
        self.closed = False
        self.last_output = None  # what the last ask()'s model.generate returned

    def close(self) -> None:
        """End the session and free its caches; later calls are refused."""
        self.closed = True
        self.cache = None

    def _check_open(self) -> None:
        if self.closed:
            raise RuntimeError("this streaming session is closed; start a new StreamingSession")

    def _render(self, messages: list[dict], add_generation_prompt: bool) -> str:
        return self.processor.apply_chat_template(messages, add_generation_prompt=add_generation_prompt)

    def _text_ids(self, before: str, after: str) -> list[int]:
        """Token ids of ``after``'s new text past ``before`` (the part already in ``self.ids``)."""
        if not after.startswith(before):
            raise ValueError(
                "the chat template renders this conversation's prefix differently; cannot stream"
            )
        return self.processor.tokenizer(after[len(before) :], add_special_tokens=False).input_ids

    def _feed(
        self, ids: list[int], pixel_values: torch.Tensor | None = None, frames: int = 0
    ) -> torch.Tensor:
        """Run the model on ``ids``, the tokens that follow the cache; returns their logits (1, n, V)."""
        new = torch.tensor([ids], device=self.model.device)
        visual = {}
        if pixel_values is not None:
            visual = dict(
                pixel_values_videos=pixel_values[None].to(self.model.device),
                video_frame_counts=torch.tensor([frames], device=self.model.device),
            )
        with torch.inference_mode():
            return self.model(input_ids=new, cache=self.cache, use_cache=True, **visual).logits

    def add_frames(self, frames: np.ndarray) -> torch.Tensor:
        """Append (T, H, W, 3) uint8 frames to the video; returns the logits of the tokens fed (1, n, V).
        Either it completes or the session is left as it was."""
        self._check_open()
        frames = np.asarray(frames)
        if frames.dtype != np.uint8:
            raise ValueError(f"frames must be uint8 RGB, got {frames.dtype}")
        pixel = self.processor.preprocess_frames(frames)  # validates the shape
        messages, rendered, new_ids = self.messages, self._rendered, []
        if not rendered.endswith(self.processor.video_token):  # a new run of frames: a new <video>
            messages = copy.deepcopy(messages)
            if not messages or messages[-1]["role"] != "user":
                messages.append({"role": "user", "content": []})  # after an answer: a new user turn
            messages[-1]["content"].append({"type": "video"})
            text = self._render(messages, add_generation_prompt=False)
            head = text[: text.rindex(self.processor.video_token)]
            new_ids = self._text_ids(rendered, head)
            rendered = head + self.processor.video_token
        # the end slot comes at ask()
        new_ids += self.processor.video_slot_ids(len(pixel), self.tokens_per_frame, end=False)
        cached, cross = self.cache.get_seq_length(), self._cross_state()
        try:  # what the cache lacks: an answer's tokens to feed again (see ask), then the new ones
            logits = self._feed(self.ids[cached:] + new_ids, pixel, len(pixel))
        except BaseException:
            self._truncate_cache(cached)
            self._restore_cross(cross)
            raise
        self.messages, self._rendered = messages, rendered
        self.ids += new_ids
        self.frames_seen += len(pixel)
        return logits

    def _cross_state(self) -> tuple[dict[int, int], torch.Tensor | None, int]:
        """What ``add_frames`` may change in the cross cache: keys per layer, frame counts, patches/frame."""
        lengths = {layer: k.shape[2] for layer, (k, _) in self.cache.cross_kv.items()}
        return lengths, self.cache.frame_counts, self.cache.patches_per_frame

    def _restore_cross(self, state: tuple[dict[int, int], torch.Tensor | None, int]) -> None:
        """Undo a failed ``add_frames``'s appends (the storage keeps its room; only the views shrink)."""
        lengths, frame_counts, patches = state
        self.cache.cross_kv = {
            layer: (k[:, :, : lengths[layer]], v[:, :, : lengths[layer]])
            for layer, (k, v) in self.cache.cross_kv.items()
            if layer in lengths
        }
        self.cache.frame_counts, self.cache.patches_per_frame = frame_counts, patches
        self.cache.selected_kv.clear()

    def _truncate_cache(self, length: int) -> None:
        """Keep each decoder layer's first ``length`` cached positions (a forward that failed midway has
        updated only some layers; transformers' ``crop`` takes a count to drop)."""
        for layer in self.cache.layers:
            extra = layer.get_seq_length() - length
            if extra > 0:
                layer.crop(-extra)

    def _check_generate_kwargs(self, kwargs: dict) -> None:
        """Refuse, before anything changes, what a session of one cached sequence cannot do."""
        owned = sorted(set(kwargs) & _SESSION_OWNS)
        if owned:
            raise ValueError(
                f"ask() sets {', '.join(owned)} itself (the session's own tokens and cache); leave them out"
            )
        config = kwargs.get("generation_config") or self.model.generation_config
        for name in ("num_beams", "num_return_sequences"):
            value = kwargs.get(name, getattr(config, name, None))
            if value not in (None, 1):
                raise ValueError(
                    f"ask(): {name}={value} needs one cached sequence per beam or return, but a streaming "
                    "session caches one conversation; use greedy decoding or sampling (num_beams=1)"
                )

    def ask(self, question: str, max_new_tokens: int = 64, streamer=None, **generate_kwargs) -> str:
        """Answer ``question`` about every frame seen so far (greedy unless ``generate_kwargs`` say
        otherwise); the answer joins the conversation. Either it completes or the session is left as it
        was (messages, ids, cache): a failed ask can be retried."""
        self._check_open()
        self._check_generate_kwargs(generate_kwargs)
        cached = self.cache.get_seq_length()
        try:
            return self._ask(question, max_new_tokens, streamer, generate_kwargs)
        except BaseException:
            self._truncate_cache(cached)  # drop what the failed generation cached (the prompt, some tokens)
            self.cache.selected_kv.clear()  # the next prompt ranks again
            raise

    def _ask(self, question: str, max_new_tokens: int, streamer, generate_kwargs: dict) -> str:
        """``ask``'s work; changes the session's state only once generation has succeeded."""
        messages = copy.deepcopy(self.messages)
        if messages and messages[-1]["role"] == "user":
            messages[-1]["content"].append({"type": "text", "text": question})
        else:
            messages.append({"role": "user", "content": [{"type": "text", "text": question}]})
        prompt = self._render(messages, add_generation_prompt=True)
        ids = list(self.ids)
        end_id = self.processor.video_end_token_id
        if end_id is not None and self._rendered.endswith(self.processor.video_token):
            ids.append(end_id)  # the end slot closes the run of frames (fed with the question)
        ids += self._text_ids(self._rendered, prompt)
        generate_kwargs.setdefault("do_sample", False)
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=torch.tensor([ids], device=self.model.device),
                cache=self.cache,
                max_new_tokens=max_new_tokens,
                streamer=streamer,
                **generate_kwargs,
            )
        sequence = out.sequences if hasattr(out, "sequences") else out
        generated = sequence[0, len(ids) :].tolist()
        answer = self.processor.tokenizer.decode(generated, skip_special_tokens=True).strip()
        messages.append({"role": "assistant", "content": answer})
        rendered = self._render(messages, add_generation_prompt=False)
        answer_ids = self._text_ids(
            prompt, rendered
        )  # the answer and end of turn, as the processor tokenises
        # Keep the generated tokens' keys/values only where the offline model would compute the same: the
        # ids agree and every step attended to every frame (no bounded-decode selection). The rest is fed
        # again, over the full memory, with the next tokens.
        keep = 0
        if not self.cache.selected_kv:
            while keep < min(len(generated), len(answer_ids)) and generated[keep] == answer_ids[keep]:
                keep += 1
        self._truncate_cache(len(ids) + keep)
        self.cache.selected_kv.clear()
        self.messages, self.ids, self._rendered, self.last_output = messages, ids + answer_ids, rendered, out
        return answer
