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
"""

from __future__ import annotations

import numpy as np
import torch

from crosslmm.model.cache import CrossLMMCache


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
        self.cache = CrossLMMCache(config=model.config.text_config, keep_full_memory=True)  # re-rank per ask
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

    def _feed(self, pixel_values: torch.Tensor | None = None, frames: int = 0) -> torch.Tensor:
        """Run the model on the tokens of ``self.ids`` not yet in the cache; returns their logits (1, n, V)."""
        new = torch.tensor([self.ids[self.cache.get_seq_length() :]], device=self.model.device)
        visual = {}
        if pixel_values is not None:
            visual = dict(
                pixel_values_videos=pixel_values[None].to(self.model.device),
                video_frame_counts=torch.tensor([frames], device=self.model.device),
            )
        with torch.inference_mode():
            return self.model(input_ids=new, cache=self.cache, use_cache=True, **visual).logits

    def add_frames(self, frames: np.ndarray) -> torch.Tensor:
        """Append (T, H, W, 3) uint8 frames to the video; returns the logits of the tokens fed (1, n, V)."""
        self._check_open()
        frames = np.asarray(frames)
        if frames.dtype != np.uint8:
            raise ValueError(f"frames must be uint8 RGB, got {frames.dtype}")
        pixel = self.processor.preprocess_frames(frames)  # validates the shape
        if not self._rendered.endswith(self.processor.video_token):  # a new run of frames: a new <video>
            if not self.messages or self.messages[-1]["role"] != "user":
                self.messages.append({"role": "user", "content": []})  # after an answer: a new user turn
            self.messages[-1]["content"].append({"type": "video"})
            text = self._render(self.messages, add_generation_prompt=False)
            head = text[: text.rindex(self.processor.video_token)]
            self.ids += self._text_ids(self._rendered, head)
            self._rendered = head + self.processor.video_token
        # the end slot comes at ask()
        self.ids += self.processor.video_slot_ids(len(pixel), self.tokens_per_frame, end=False)
        self.frames_seen += len(pixel)
        return self._feed(pixel, len(pixel))

    def ask(self, question: str, max_new_tokens: int = 64, streamer=None, **generate_kwargs) -> str:
        """Answer ``question`` about every frame seen so far (greedy unless ``generate_kwargs`` say
        otherwise); the answer joins the conversation."""
        self._check_open()
        if self.messages and self.messages[-1]["role"] == "user":
            self.messages[-1]["content"].append({"type": "text", "text": question})
        else:
            self.messages.append({"role": "user", "content": [{"type": "text", "text": question}]})
        prompt = self._render(self.messages, add_generation_prompt=True)
        end_id = self.processor.video_end_token_id
        if end_id is not None and self._rendered.endswith(self.processor.video_token):
            self.ids.append(end_id)  # the end slot closes the run of frames
        self.ids += self._text_ids(self._rendered, prompt)
        generate_kwargs.setdefault("do_sample", False)
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=torch.tensor([self.ids], device=self.model.device),
                cache=self.cache,
                max_new_tokens=max_new_tokens,
                streamer=streamer,
                **generate_kwargs,
            )
        self.last_output = out
        sequence = out.sequences if hasattr(out, "sequences") else out
        generated = sequence[0, len(self.ids) :].tolist()
        answer = self.processor.tokenizer.decode(generated, skip_special_tokens=True)
        eos = self.processor.tokenizer.eos_token_id
        if generated and generated[-1] == eos:
            generated = generated[:-1]  # the template's own end of turn follows
        self.messages.append({"role": "assistant", "content": answer})
        self.ids += generated
        rendered = self._render(self.messages, add_generation_prompt=False)
        self.ids += self._text_ids(prompt + answer, rendered)
        self._rendered = rendered
        return answer.strip()
