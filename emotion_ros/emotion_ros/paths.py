"""Where the package's shared files (models, config, launch) are, installed or in the source tree.

Installed (colcon or the venv set-up): ``<prefix>/share/emotion_ros/{models,config}``, found
through ``ament_index_python``.  From a source checkout: ``emotion_ros/{models,config}`` beside
this Python package.  No rclpy needed.
"""
from __future__ import annotations

import os
from typing import Optional

PACKAGE = "emotion_ros"
_SOURCE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def share_dir() -> Optional[str]:
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
    except ImportError:
        return None
    try:
        return get_package_share_directory(PACKAGE)
    except (PackageNotFoundError, KeyError, ValueError, OSError):  # OSError: AMENT_PREFIX_PATH unset
        return None


def _find(sub: str, name: str) -> str:
    """The installed package's file when it exists (what ``ros2 run`` / ``ros2 launch`` run), else the source
    tree's; when neither exists, the source tree's path, so that callers can name the missing file.  The one
    place this order is decided: the nodes' default models and rules, the tools and the tests all use it."""
    share = share_dir()
    if share and os.path.exists(os.path.join(share, sub, name)):
        return os.path.join(share, sub, name)
    return os.path.join(_SOURCE_ROOT, sub, name)


def model_path(name: str) -> str:
    return _find("models", name)


def config_path(name: str) -> str:
    return _find("config", name)


def launch_path(name: str) -> str:
    return _find("launch", name)
