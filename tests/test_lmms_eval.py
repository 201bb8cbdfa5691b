"""The lmms-eval plugin (entry point, inputs, option scoring, real CLI run offline) and ``crosslmm paper-table``."""

from __future__ import annotations

import json
import os
import re
import textwrap
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import random_frames, run_lmms_eval, set_gates
from PIL import Image

from crosslmm.cli import main
from crosslmm.data.sampling import FrameSampling
from crosslmm.data.video import load_frames, write_video
from crosslmm.eval.paper_table import collect, render
from crosslmm.paper import BENCHMARKS, PAPER_ROWS

pytest.importorskip("lmms_eval")

# A local generate_until task and a multiple-choice (loglikelihood) task over the same JSON docs; the
# docs path is filled in per test. No hub access: the datasets library's packaged "json" builder.
TASK_UTILS = """
def doc_to_visual(doc):
    return [doc["video"]]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return doc["question"] + "\\n" + "\\n".join(doc["options"]) + "\\nAnswer with the option's letter."


def doc_to_choice(doc):
    return ["A", "B", "C", "D"]


def process_results(doc, results):
    return {"accuracy": float(results[0].strip()[:1] == doc["answer"])}
"""

TASK_YAML = """
task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {docs}
test_split: test
output_type: {output_type}
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
"""

GENERATE_YAML = """
doc_to_target: answer
generation_kwargs:
  max_new_tokens: 4
  do_sample: false
process_results: !function utils.process_results
metric_list:
  - metric: accuracy
    aggregation: mean
    higher_is_better: true
"""

CHOICE_YAML = """
doc_to_choice: !function utils.doc_to_choice
doc_to_target: answer_index
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


def write_tasks(root, num_docs: int = 3) -> str:
    """mp4s + docs JSON + the two task YAMLs; returns the --include_path dir."""
    docs = []
    for i in range(num_docs):
        video = root / f"video{i}.mp4"
        write_video(video, np.full((12, 32, 32, 3), 60 * i, dtype=np.uint8), fps=4)
        options = ["A. black", "B. grey", "C. white", "D. red"]
        docs.append(dict(video=str(video), question="What colour is the video?", options=options))
        docs[-1].update(answer="ABCD"[i], answer_index=i)
    (root / "docs.json").write_text(json.dumps(docs))
    tasks = root / "tasks"
    tasks.mkdir()
    (tasks / "utils.py").write_text(TASK_UTILS)
    for name, output_type, rest in [
        ("crosslmm_smoke", "generate_until", GENERATE_YAML),
        ("crosslmm_smoke_mc", "multiple_choice", CHOICE_YAML),
    ]:
        head = TASK_YAML.format(name=name, docs=root / "docs.json", output_type=output_type)
        (tasks / f"{name}.yaml").write_text(textwrap.dedent(head) + textwrap.dedent(rest))
    return str(tasks)


def test_entry_point_registers_the_model():
    """lmms-eval >= 0.7 builds its registry from ``lmms_eval.models`` entry points whose payload is a
    ModelManifest (or a callable returning one), not the model class."""
    from lmms_eval.models import get_model

    from crosslmm.eval.lmms_plugin import CrossLMMEval

    (ep,) = [ep for ep in entry_points().select(group="lmms_eval.models") if ep.name == "crosslmm"]
    manifest = ep.load()()
    assert manifest.model_id == "crosslmm"
    assert get_model("crosslmm") is CrossLMMEval


@pytest.fixture(scope="module")
def gated_dir(tiny_dir, tmp_path_factory) -> str:
    """The tiny model with every cross-attention gate open, so cross-attention runs in the plugin tests and
    what the plugin answers depends on the video (with gates at 0 the blocks add nothing)."""
    from crosslmm.inference import load
    from crosslmm.model.build import save_model_dir

    model, processor = load(tiny_dir)
    set_gates(model, 1.0)
    out = tmp_path_factory.mktemp("gated")
    save_model_dir(model, processor, out)
    return str(out)


@pytest.fixture(scope="module")
def plugin(gated_dir):
    from crosslmm.eval.lmms_plugin import CrossLMMEval

    return CrossLMMEval.create_from_arg_string(
        f"pretrained={gated_dir},max_frames=4,max_new_tokens=3", {"batch_size": 2, "device": "cpu"}
    )


def _request(plugin, visuals, doc_id: int, kind: str = "generate_until"):
    from lmms_eval.api.instance import Instance

    plugin.task_dict.setdefault("t", {"test": {}})["test"][doc_id] = {"visuals": visuals}
    second = {"until": ["\n\n"]} if kind == "generate_until" else " A"
    args = ("What is shown?", second, lambda doc: doc["visuals"], doc_id, "t", "test")
    return Instance(kind, args, idx=0, metadata={"task": "t", "doc_id": doc_id, "repeats": 1})


def test_plugin_takes_what_lmms_eval_hands_over(plugin, tmp_path):
    path = tmp_path / "clip.mp4"
    write_video(path, random_frames(8, size=32), fps=8)
    frames = random_frames(6)
    visuals = [
        [str(path)],
        [Image.new("RGB", (20, 16))],
        [frames],
        [[Image.fromarray(f) for f in frames]],
        [str(path), Image.new("RGB", (20, 16))],  # two visuals: two <video> placeholders
        [],  # text only
    ]
    answers = plugin.generate_until([_request(plugin, v, i) for i, v in enumerate(visuals)])
    assert len(answers) == len(visuals) and all(isinstance(a, str) for a in answers)
    assert answers[2] == answers[3]  # the same frames as an array or as PIL images
    assert answers[0] != answers[2]  # another video, another answer: the frames reach the model
    scored = plugin.loglikelihood(
        [
            _request(plugin, [frames], 2, kind="loglikelihood"),
            _request(plugin, [str(path)], 0, kind="loglikelihood"),
        ]
    )
    (nll, greedy), (other_nll, _) = [s.text for s in scored]
    assert nll > 0 and isinstance(greedy, bool)
    assert nll != pytest.approx(other_nll, rel=1e-4)


def test_plugin_samples_frames_alike_for_generation_and_scoring(plugin, gated_dir):
    """``max_frames=4`` subsamples a 12-frame video to the same 4 frames for ``generate_until`` and
    ``loglikelihood``; all 12 frames would give another answer and score."""
    from crosslmm.inference import build_prompt, continuation_nll, generate, load

    model, processor = load(gated_dir)
    frames = random_frames(12, seed=3)
    four = load_frames(frames, FrameSampling.resolve(max_frames=4))
    prompt = build_prompt(processor, "What is shown?")
    (answer,) = plugin.generate_until([_request(plugin, [frames], 20)])
    (scored,) = plugin.loglikelihood([_request(plugin, [frames], 20, kind="loglikelihood")])
    assert answer == generate(model, processor, [prompt], [[four]], max_new_tokens=3)[0]
    assert scored.text == continuation_nll(model, processor, prompt, [four], [" A"])[0]
    assert answer != generate(model, processor, [prompt], [[frames]], max_new_tokens=3)[0]
    assert scored.text[0] != continuation_nll(model, processor, prompt, [frames], [" A"])[0][0]


def test_option_is_scored_as_the_assistants_answer(gated_dir):
    """An option lmms-eval hands over as " red" is scored on the ids the processor makes of the whole
    conversation whose assistant turn answers "red": the answer's tokens and the end-of-turn token (which
    tells "red" from "reddish"), with the frames in place. The delimiter's space changes nothing."""
    from crosslmm.inference import _answer_ids, build_prompt, continuation_nll, load

    model, processor = load(gated_dir)
    frames = random_frames(3)
    question = "What colour is the marker?"
    user = {"role": "user", "content": f"{processor.video_token}\n{question}"}
    prompt = build_prompt(processor, question)
    assert processor.apply_chat_template([user], add_generation_prompt=True) == prompt
    full = processor.apply_chat_template(
        [user, {"role": "assistant", "content": "red"}], add_generation_prompt=False
    )
    full_ids = processor(text=[full], videos=[frames])["input_ids"][0].tolist()
    prompt_ids = processor(text=[prompt], videos=[frames])["input_ids"][0].tolist()
    n = len(prompt_ids)
    assert full_ids[:n] == prompt_ids

    answer = _answer_ids(processor, prompt, " red")
    assert full_ids[n : n + len(answer)] == answer
    assert processor.tokenizer.decode(answer) == "red<|im_end|>"
    assert answer[-1] == processor.tokenizer.eos_token_id
    assert processor.tokenizer.decode(full_ids[n + len(answer) :]).strip() == ""  # only the turn's newline

    with torch.no_grad():
        logprobs = model(**processor(text=[full], videos=[frames]), use_cache=False).logits[0].log_softmax(-1)
    expected = -sum(logprobs[n - 1 + j, t].item() for j, t in enumerate(answer))
    (spaced, _), (plain, _) = continuation_nll(model, processor, prompt, [frames], [" red", "red"])
    assert spaced == pytest.approx(expected, rel=1e-5)
    assert plain == spaced


@pytest.mark.parametrize(
    "visual",
    [{"array": np.zeros(16000), "sampling_rate": 16000}, b"\x00\x01", 3.0],
    ids=["audio", "bytes", "float"],
)
def test_plugin_refuses_unsupported_visuals(plugin, visual):
    with pytest.raises(TypeError, match=r"crosslmm cannot take the visual of t/test doc 7: .*video"):
        plugin.generate_until([_request(plugin, [visual], 7)])


def test_benchmark_scripts_use_real_lmms_eval_tasks():
    """Each scripts/eval/<benchmark>.sh runs one task of BENCHMARKS, and each is defined (``task:`` or
    ``group:``) by a YAML of the installed lmms-eval, so an lmms-eval upgrade that renames one fails here."""
    import lmms_eval

    tasks_dir = Path(lmms_eval.__file__).parent / "tasks"
    defined = set()
    for yaml in tasks_dir.rglob("*.yaml"):
        defined.update(re.findall(r"^(?:task|group):\s*[\"']?(\w+)", yaml.read_text(errors="ignore"), re.M))
    scripts = Path(__file__).parents[1] / "scripts" / "eval"
    run = {
        re.search(r"_run\.sh\" (\w+)", p.read_text()).group(1)
        for p in scripts.glob("[!_]*.sh")
        if p.name != "all.sh"
    }
    assert run == {b.task for b in BENCHMARKS}
    assert run <= defined


def test_paper_table_reads_lmms_eval_results(tmp_path):
    """Scales fractions to %, averages a group without its own score (MVBench) over its subtasks, marks
    what is missing, and keeps the newest run of a task."""
    subtasks = ["mvbench_action_count", "mvbench_moving_count"]
    results = {
        "videomme": {"alias": "videomme", "videomme_perception_score,none": 58.24, "x_stderr,none": 1.0},
        "longvideobench_val_v": {"lvb_acc,none": 0.5},
        "mvbench": {"alias": "mvbench"},
        "mvbench_action_count": {"mvbench_accuracy,none": 50.0},
        "mvbench_moving_count": {"mvbench_accuracy,none": 60.0},
    }
    run = tmp_path / "out" / "runs__crosslmm-2b"
    run.mkdir(parents=True)
    config = {"model": "crosslmm", "model_args": "pretrained=/runs/crosslmm-2b,max_frames=64"}
    old = {"results": {"videomme": {"videomme_perception_score,none": 1.0}}, "config": config}
    (run / "20250101_000000_results.json").write_text(json.dumps(old))
    new = {"results": results, "group_subtasks": {"mvbench": subtasks}, "config": config}
    (run / "20250102_000000_results.json").write_text(json.dumps(new))

    rows, files = collect(tmp_path / "out")
    assert rows == {
        "crosslmm-2b (max_frames=64)": {
            "Video-MME (w/o subs)": pytest.approx(58.24),
            "LongVideoBench (val)": pytest.approx(50.0),
            "MVBench": pytest.approx(55.0),
        }
    }
    table = render(rows, files, "out")
    header = next(line for line in table.splitlines() if line.startswith("| Model"))
    assert header.count("|") == len(BENCHMARKS) + 2
    assert "| **ours**: crosslmm-2b (max_frames=64) | 55.0 | – | 50.0 | – | 58.2 | – | – |" in table
    assert "| CrossLMM-2B, 9 tok/frame (paper) | 63.5 | 63.5 | 51.8 | 61.0 | 59.1 | 61.3 | – |" in table
    paper_rows = [line[2:].split(" (paper) |")[0] for line in table.splitlines() if " (paper) |" in line]
    assert paper_rows == list(PAPER_ROWS)  # every paper row, once, in order


def test_paper_table_without_results_is_a_clear_error(tmp_path, capsys):
    assert main(["paper-table", str(tmp_path), "--out", str(tmp_path / "r.md")]) == 2
    assert "no *_results.json" in capsys.readouterr().err


def _assert_mc_scores_are_the_librarys(model_dir: str, out: Path, docs_dir: Path, accuracy: float) -> None:
    """The option scores lmms-eval logged are ``continuation_nll``'s for the same prompt and 4 frames, each
    doc is right iff its lowest-scoring option is the answer (lmms-eval's argmin), and acc is their mean."""
    from crosslmm.inference import build_prompt, continuation_nll, load

    model, processor = load(model_dir)
    docs = json.loads((docs_dir / "docs.json").read_text())
    logged = {
        s["doc_id"]: s
        for f in out.rglob("*_samples_crosslmm_smoke_mc.jsonl")
        for s in map(json.loads, f.open())
    }
    assert sorted(logged) == list(range(len(docs)))
    correct = []
    for doc_id, doc in enumerate(docs):
        sample = logged[doc_id]
        frames = load_frames(doc["video"], FrameSampling.resolve(max_frames=4))
        prompt = build_prompt(processor, sample["input"])
        nll = [
            score
            for score, _ in continuation_nll(model, processor, prompt, [frames], [" A", " B", " C", " D"])
        ]
        assert [float(score) for score, _ in sample["filtered_resps"]] == pytest.approx(nll, rel=1e-5)
        correct.append(float(min(range(4), key=nll.__getitem__) == doc["answer_index"]))
        assert sample["acc"] == correct[-1]
    assert accuracy == pytest.approx(sum(correct) / len(correct))


@pytest.mark.slow
def test_lmms_eval_cli_end_to_end(tiny_dir, tmp_path):
    """The real ``python -m lmms_eval`` finds the plugin by its entry point and runs a generation task
    and a multiple-choice (loglikelihood) task offline; paper-table then reads the results file."""
    include = write_tasks(tmp_path)
    out = tmp_path / "out"
    results = run_lmms_eval(
        f"pretrained={tiny_dir},max_frames=4",
        "crosslmm_smoke,crosslmm_smoke_mc",
        include,
        out,
        tmp_path / "hf",
    )
    assert set(results) == {"crosslmm_smoke", "crosslmm_smoke_mc"}
    _assert_mc_scores_are_the_librarys(tiny_dir, out, tmp_path, results["crosslmm_smoke_mc"]["acc,none"])
    samples = [json.loads(line) for f in out.rglob("*_samples_crosslmm_smoke.jsonl") for line in f.open()]
    assert len(samples) == 3 and all(isinstance(s["filtered_resps"], str) for s in samples)

    table = tmp_path / "results.md"
    assert main(["paper-table", str(out), "--out", str(table)]) == 0
    text = table.read_text()
    assert "crosslmm_smoke (accuracy)" in text and "crosslmm_smoke_mc (acc)" in text
    assert f"| **ours**: {os.path.basename(tiny_dir)} (max_frames=4) |" in text
