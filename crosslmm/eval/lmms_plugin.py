"""lmms-eval model ``crosslmm``: stock lmms-eval (>= 0.7) runs CrossLMM through :mod:`crosslmm.inference`.

Registered by the ``lmms_eval.models`` entry point (see :func:`crosslmm.eval.lmms_eval_manifest`), so

    python -m lmms_eval --model crosslmm --model_args pretrained=DIR,max_frames=64 --tasks videomme

works with both packages installed. Multi-GPU follows lmms-eval's accelerate convention: launch with
``accelerate launch --num_processes N -m lmms_eval ...``; each process puts a full model on its own GPU and
lmms-eval shards the documents by ``rank``/``world_size``.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable

import numpy as np
import torch
from accelerate import Accelerator
from lmms_eval.api.instance import GenerationResult, Instance
from lmms_eval.api.model import lmms
from tqdm import tqdm

from crosslmm.eval.compat import skip_filelock3_patch_on_filelock4
from crosslmm.inference import FrameSampling, build_prompt, continuation_nll, generate, load, load_frames

DEFAULT_MAX_NEW_TOKENS = 64  # when neither model_args nor the task set a budget


# Before simple_evaluate reaches lmms-eval's filelock-3 patch (lmms-eval imports this module first).
skip_filelock3_patch_on_filelock4()


class CrossLMMEval(lmms):
    """``model_args``: ``pretrained`` (model dir), ``num_frames`` | ``fps``, ``min_frames``, ``max_frames``
    (:class:`crosslmm.data.sampling.FrameSampling`, the rule training uses),
    ``max_new_tokens`` (overrides the task's budget), ``dtype``, ``device``; ``batch_size`` from the CLI.

    Each visual a task hands over becomes one ``<video>`` in the prompt, in order: a video/image path, a
    PIL image (one frame), a list of PIL images (the frames of one video) or a (T, H, W, 3) uint8 array.
    Anything else (audio dicts, raw bytes, ...) is refused with an error naming the task and document.
    """

    is_simple = True

    def __init__(
        self,
        pretrained: str,
        num_frames: int | None = None,
        fps: float | None = None,
        max_frames: int | None = None,
        min_frames: int | None = None,
        tokens_per_frame: int | None = None,
        allow_untrained_budgets: bool = False,
        max_new_tokens: int | None = None,
        dtype: str | None = None,
        device: str | None = None,
        batch_size: int | str = 1,
        max_batch_size: int | None = None,  # lmms-eval passes its --max_batch_size; batches are fixed here
    ) -> None:
        super().__init__()
        self.sampling = FrameSampling.resolve(num_frames, fps, max_frames, min_frames)
        if max_new_tokens is not None and max_new_tokens <= 0:
            raise ValueError(f"max_new_tokens must be > 0, got {max_new_tokens}")
        self.max_new_tokens = max_new_tokens
        self.batch_size = int(batch_size)
        if self.batch_size <= 0:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size}")

        self.accelerator = Accelerator()
        if self.accelerator.num_processes > 1:
            device = f"cuda:{self.accelerator.local_process_index}"
        elif device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self._rank = self.accelerator.process_index
        self._world_size = self.accelerator.num_processes
        if not isinstance(allow_untrained_budgets, bool):  # lmms-eval turns "true"/"false" into bools
            raise ValueError(
                f"allow_untrained_budgets must be true or false, got {allow_untrained_budgets!r}"
            )
        self.model, self.processor = load(
            pretrained, device=device, dtype=dtype, allow_untrained_budgets=allow_untrained_budgets
        )
        if tokens_per_frame is not None:  # an elastic model's budget; refused at once if not trained
            self.model.config.check_budget(int(tokens_per_frame), source="model_args tokens_per_frame")
        self.tokens_per_frame = None if tokens_per_frame is None else int(tokens_per_frame)

    def _videos(self, visuals: list | None, where: str) -> list[np.ndarray]:
        """A document's visuals as frame arrays, one per ``<video>`` placeholder; ``where`` names the
        document in errors."""
        try:
            size = self.processor.frame_size
            return [load_frames(visual, self.sampling, size=size) for visual in visuals or []]
        except TypeError as err:
            raise TypeError(f"crosslmm cannot take the visual of {where}: {err}") from None

    def _doc_videos(self, doc_to_visual: Callable, doc_id: int, task: str, split: str) -> list[np.ndarray]:
        return self._videos(
            doc_to_visual(self.task_dict[task][split][doc_id]), f"{task}/{split} doc {doc_id}"
        )

    def _generate_kwargs(self, task_kwargs: dict) -> dict:
        """lmms-eval generation kwargs -> ``generate`` kwargs; greedy unless the task samples."""
        budget = self.max_new_tokens or task_kwargs.get("max_new_tokens") or DEFAULT_MAX_NEW_TOKENS
        out = {
            "max_new_tokens": int(budget),
            "num_beams": int(task_kwargs.get("num_beams", 1)),
            "tokens_per_frame": self.tokens_per_frame,
        }
        temperature = float(task_kwargs.get("temperature", 0.0))
        if task_kwargs.get("do_sample", False) and temperature > 0:
            out.update(do_sample=True, temperature=temperature, top_p=float(task_kwargs.get("top_p", 1.0)))
        return out

    def generate_until(self, requests: list[Instance]) -> list[str]:
        """Batches of ``batch_size`` requests that share generation kwargs; answers in request order."""
        answers: list[str] = [""] * len(requests)
        pbar = tqdm(total=len(requests), disable=self.rank != 0, desc="CrossLMM generating")
        order = sorted(range(len(requests)), key=lambda i: _kwargs_key(requests[i]))
        for _, same_kwargs in itertools.groupby(order, key=lambda i: _kwargs_key(requests[i])):
            same_kwargs = list(same_kwargs)
            for first in range(0, len(same_kwargs), self.batch_size):
                batch = same_kwargs[first : first + self.batch_size]
                kwargs = requests[batch[0]].args[1]
                prompts, videos = [], []
                for i in batch:
                    context, _, doc_to_visual, doc_id, task, split = requests[i].args
                    videos.append(self._doc_videos(doc_to_visual, doc_id, task, split))
                    prompts.append(build_prompt(self.processor, context, len(videos[-1])))
                texts = generate(self.model, self.processor, prompts, videos, **self._generate_kwargs(kwargs))
                for i, text in zip(batch, texts):
                    answers[i] = _cut_at_stop(text, kwargs.get("until"))
                    self.cache_hook.add_partial("generate_until", (requests[i].args[0], kwargs), answers[i])
                pbar.update(len(batch))
        pbar.close()
        return answers

    def loglikelihood(self, requests: list[Instance]) -> list[GenerationResult]:
        """(negative log-likelihood, is-greedy) per request, the option scored as the assistant's answer
        (see :func:`crosslmm.inference.continuation_nll` and docs/evaluation.md): lower is likelier, as
        lmms-eval's multiple-choice scoring, which takes the argmin, expects. Consecutive requests on the
        same document and context (the options of one question) share one decode of the video, sampled as
        for generation (``self.sampling``).

        Each pair is wrapped in a ``GenerationResult``: lmms-eval 0.7.3 passes every model output through
        ``unwrap_generation_output``, which turns anything but a str or GenerationResult into ``str(output)``
        and so breaks its own multiple-choice scoring; the wrapper hands the tuple through unchanged.
        """
        results: list[tuple[float, bool]] = []
        pbar = tqdm(total=len(requests), disable=self.rank != 0, desc="CrossLMM scoring")
        for (context, doc_id, task, split), group in itertools.groupby(requests, key=_question_key):
            group = list(group)
            doc = self.task_dict[task][split][doc_id]
            targets = [r.args[1] if isinstance(r.args[1], str) else r.args[1](doc) for r in group]
            videos = self._doc_videos(group[0].args[2], doc_id, task, split)
            prompt = build_prompt(self.processor, context, len(videos))
            results.extend(
                continuation_nll(self.model, self.processor, prompt, videos, targets, self.tokens_per_frame)
            )
            pbar.update(len(group))
        pbar.close()
        return [GenerationResult(text=score) for score in results]

    def generate_until_multi_round(self, requests: list[Instance]) -> list[tuple[str, ...]]:
        """One request at a time: each round is a fresh question (the task's ``doc_to_text`` carries the
        history it wants) until ``doc_to_text`` signals the end."""
        results = []
        for request in tqdm(requests, disable=self.rank != 0, desc="CrossLMM multi-round"):
            context, kwargs, doc_to_visual, doc_to_text, doc_id, task, split = request.args
            doc = self.task_dict[task][split][doc_id]
            videos = self._doc_videos(doc_to_visual, doc_id, task, split)
            rounds: list[str] = []
            info = None
            while True:
                if rounds:
                    visuals, context, done, previous, info = doc_to_text(
                        doc, previous_output=rounds, round_idx=len(rounds), previous_round_info=info
                    )
                    if done:
                        break
                    rounds = list(previous)
                    videos = self._videos(visuals, f"{task}/{split} doc {doc_id} round {len(rounds)}")
                prompt = build_prompt(self.processor, context, len(videos))
                text = generate(
                    self.model, self.processor, [prompt], [videos], **self._generate_kwargs(kwargs)
                )
                rounds.append(_cut_at_stop(text[0], kwargs.get("until")))
            results.append(tuple(rounds))
        return results


def _question_key(request: Instance) -> tuple:
    """(context, doc_id, task, split): the options of one multiple-choice question share it."""
    return (request.args[0], *request.args[3:])


def _kwargs_key(request: Instance) -> str:
    return json.dumps(request.args[1], sort_keys=True, default=str)


def _cut_at_stop(text: str, until: str | list[str] | None) -> str:
    """Cut an answer at the first of the task's stop strings (EOS already ends generation)."""
    stops = [until] if isinstance(until, str) else list(until or [])
    for stop in stops:
        if stop:
            text = text.split(stop, 1)[0]
    return text
