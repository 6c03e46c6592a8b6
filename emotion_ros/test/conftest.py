"""pytest configuration shared by all emotion_ros tests.

Transport: the test processes use the same Fast DDS profile as the nodes (config/fastdds_shm.xml, which every node
sets for itself through run_node), set here before any test creates a DDS participant; without it large images sent
by a test go over UDP fragments and may be lost.

Markers:
- ``soak``: long-running tests (minutes) that look for growth over time; skipped unless ``EMOTION_SOAK=1``.
"""
import os

import pytest

from emotion_ros.env import ensure_ros_env

ensure_ros_env()


def pytest_configure(config):
    config.addinivalue_line("markers", "soak: long-running test (minutes); runs only with EMOTION_SOAK=1")


def pytest_collection_modifyitems(config, items):
    if os.environ.get("EMOTION_SOAK") == "1":
        return
    skip = pytest.mark.skip(reason="soak test: set EMOTION_SOAK=1 to run it")
    for item in items:
        if "soak" in item.keywords:
            item.add_marker(skip)
