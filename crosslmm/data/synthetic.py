"""A toy video-QA dataset (coloured marker on noise) for CPU training runs and tests.

The answer (the marker's colour) is visible in every frame, so a tiny model's loss drops within a few
steps, which is what the end-to-end tests check. It also exercises every input format of the data pipeline
(a JSONL of multi-turn video records, a JSON of image records, a mixture YAML). The demo's dataset
(``crosslmm/demo/synth.py``) is a different experiment: its answer hides in one patch of a few frames.
"""

from __future__ import annotations

import json
import os

import numpy as np
import yaml
from PIL import Image

from crosslmm.data.video import write_video

# The answer colours of both synthetic datasets (this toy one and the demo's, crosslmm/demo/synth.py). Fully
# saturated: the demo relies on its marker being the only pixels at 0 or 255.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
}


def make_toy_dataset(
    out: str, num_videos: int = 8, num_frames: int = 8, size: int = 32, seed: int = 0
) -> str:
    """Write ``num_videos`` mp4s, one image, a JSONL of video records, a JSON of image records and a mixture
    YAML using both; returns the mixture path."""
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(out, "media"), exist_ok=True)
    names = list(COLOURS)
    video_records = []
    for i in range(num_videos):
        colour = names[i % len(names)]
        frames = rng.integers(0, 60, (num_frames, size, size, 3), dtype=np.uint8)
        for t in range(num_frames):
            x = (t * 3) % (size - 8)
            frames[t, 8:16, x : x + 8] = COLOURS[colour]
        write_video(os.path.join(out, "media", f"v{i}.mp4"), frames)
        video_records.append(
            {
                "id": f"v{i}",
                "video": f"media/v{i}.mp4",
                "conversations": [
                    {"from": "human", "value": "<video>\nWhat colour is the marker?"},
                    {"from": "gpt", "value": f"The marker is {colour}."},
                    {"from": "human", "value": "Does it move?"},
                    {"from": "gpt", "value": "yes"},
                ],
            }
        )
    image = np.full((size, size, 3), 20, dtype=np.uint8)
    image[8:24, 8:24] = COLOURS["red"]
    Image.fromarray(image).save(os.path.join(out, "media", "square.png"))
    image_records = [
        {
            "id": "img0",
            "image": "media/square.png",
            "conversations": [
                {"from": "human", "value": "<image>\nWhat colour is the square?"},
                {"from": "gpt", "value": "red"},
            ],
        }
    ]
    with open(os.path.join(out, "videos.jsonl"), "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in video_records)
    with open(os.path.join(out, "images.json"), "w", encoding="utf-8") as f:
        json.dump(image_records, f)
    mixture = os.path.join(out, "mixture.yaml")
    spec = {
        "seed": 0,
        "datasets": [
            {"path": "videos.jsonl", "data_root": "."},
            {"path": "images.json", "data_root": ".", "count": 2},
        ],
    }
    with open(mixture, "w", encoding="utf-8") as f:
        yaml.safe_dump(spec, f)
    return mixture
