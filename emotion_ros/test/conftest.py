"""pytest configuration shared by all emotion_ros tests.

Markers:
- ``soak``: long-running tests (minutes) that look for growth over time; skipped unless ``EMOTION_SOAK=1``.
"""
import os

import pytest


def pytest_configure(config):
    config.addinivalue_line("markers", "soak: long-running test (minutes); runs only with EMOTION_SOAK=1")


def pytest_collection_modifyitems(config, items):
    if os.environ.get("EMOTION_SOAK") == "1":
        return
    skip = pytest.mark.skip(reason="soak test: set EMOTION_SOAK=1 to run it")
    for item in items:
        if "soak" in item.keywords:
            item.add_marker(skip)
