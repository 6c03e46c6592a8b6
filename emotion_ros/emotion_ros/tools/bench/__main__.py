"""``python -m emotion_ros.tools.bench``: the same as ``emotion-bench``."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
