"""pytest configuration shared by all emotion_ros tests.

Transport: the test processes use the same Fast DDS profile as the nodes (config/fastdds_shm.xml, which every node
sets for itself through run_node), set here before any test creates a DDS participant; without it large images sent
by a test go over UDP fragments and may be lost.

ROS context (fixture ``ctx``): one rclpy ``Context`` per test module, with an **anchor node** that lives as long as
the module. rmw_fastrtps creates a context's DDS participant with its first node and destroys it with its last;
destroying a participant while its discovery callbacks are running can hang for ever (seen in CI, 2026-12-03:
``rmw_destroy_node`` -> ``destroy_participant`` -> ``DomainParticipant::set_listener`` spinning while a Fast DDS
discovery thread waited in ``on_reader_discovery``; an upstream Fast DDS 3.2 problem with several participants in
one process, eProsima/Fast-DDS#6193). A test that creates a node and destroys it within milliseconds did exactly
that, once per test; with the anchor the participant is created and destroyed once per module, after discovery has
settled.

Markers:
- ``soak``: long-running tests (minutes) that look for growth over time; skipped unless ``EMOTION_SOAK=1``.
"""
import os

import pytest

from emotion_ros.env import ensure_ros_env

ensure_ros_env()


@pytest.fixture(scope="module")
def ctx():
    """An initialised rclpy Context for the module, its participant held by an anchor node (see above)."""
    import rclpy
    from rclpy.context import Context

    c = Context()
    rclpy.init(context=c)
    anchor = rclpy.create_node(f"test_anchor_{os.getpid()}_{id(c):x}", context=c,
                               start_parameter_services=False, enable_rosout=False)
    try:
        yield c
    finally:
        anchor.destroy_node()
        rclpy.shutdown(context=c)


def pytest_configure(config):
    config.addinivalue_line("markers", "soak: long-running test (minutes); runs only with EMOTION_SOAK=1")


def pytest_collection_modifyitems(config, items):
    if os.environ.get("EMOTION_SOAK") == "1":
        return
    skip = pytest.mark.skip(reason="soak test: set EMOTION_SOAK=1 to run it")
    for item in items:
        if "soak" in item.keywords:
            item.add_marker(skip)
