"""``crosslmm bench data``: the input pipeline at stage-2 frame counts (docs/efficiency.md, "Input pipeline").

* ``videos.py``: generated H.264 test videos (720p/1080p, minutes long, stated bitrate and keyframe interval),
  cached in a directory;
* ``measure.py``: one sample decoded in a fresh process (seconds, peak RSS), DataLoader samples/s, and the
  samples/s a stage-2 job needs from the analytic FLOPs;
* ``report.py``: the run, its tables and targets, ``data.json`` and ``data.png``.
"""
