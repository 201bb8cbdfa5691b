"""The paper's published efficiency numbers (Fig. 4, Table 6; docs/paper.md section 5), in one place for the
benchmarks to print beside ours. Measured by the authors on 8 H800s at 32/64/128/256 frames; the model size
and tokens per frame of the CrossLMM column in Fig. 4 are not stated (the FLOPs fit the 7B at 9 tokens per
frame, see ``flops.paper_convention_flops``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PaperEfficiency:
    """One model's curve in a figure or table: values per frame count."""

    model: str
    memory_mb: dict[int, float]
    tflops: dict[int, float]
    prefill_ms: dict[int, float]


# Fig. 4. The text gives 2531 MB and 1975 ms for CrossLMM at 256 frames; the figure's numbers are kept.
FIG4_LLAVA_OV = PaperEfficiency(
    model="LLaVA-OneVision-7B",
    memory_mb={32: 4858, 64: 8640, 128: 16206, 256: 20208},
    tflops={32: 57, 64: 113.56, 128: 226.67, 256: 316.88},
    prefill_ms={32: 554, 64: 1129, 128: 2504, 256: 3978},
)
FIG4_CROSSLMM = PaperEfficiency(
    model="CrossLMM-7B",
    memory_mb={32: 1753, 64: 1864, 128: 2087, 256: 2530},
    tflops={32: 13.17, 64: 25.92, 128: 51.43, 256: 102.42},
    prefill_ms={32: 335, 64: 578, 128: 1063, 256: 2019},
)
# Table 6 (tokens per frame not stated; the FLOPs fit only 1, see flops.paper_convention_flops).
TABLE6_CROSSLMM_2B = PaperEfficiency(
    model="CrossLMM-2B",
    memory_mb={32: 715.61, 64: 825.21, 128: 1046.68, 256: 1490.25},
    tflops={32: 10.93, 64: 21.77, 128: 43.46, 256: 86.82},
    prefill_ms={32: 264.06, 64: 505.50, 128: 909.77, 256: 1698.12},
)
