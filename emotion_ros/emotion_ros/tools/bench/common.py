"""What the bench's modules share: the package root (for the node processes), the node kinds, the progress log."""
from __future__ import annotations

import os
import time

# .../emotion_ros (the ROS package folder): four levels above emotion_ros/tools/bench/common.py
PKG_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
NODES = ("face", "voice", "fusion")


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)
