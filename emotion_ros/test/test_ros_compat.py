"""emotion_ros.ros.compat, on whichever ROS 2 distribution the venv holds (Kilted: make test; Jazzy: make test-jazzy):
the Fast DDS profile reaches this distribution's Fast DDS whichever variable name it reads, and the RIHS01 type hashes
our interface packages carry on the graph are the ones computed from their .msg sources, so that a Kilted peer and a
Jazzy peer (robot and server) match."""

import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

os.environ.setdefault("ROS_DOMAIN_ID", str(random.randint(1, 200)))

import pytest  # noqa: E402
import rclpy  # noqa: E402
from rclpy.context import Context  # noqa: E402
from rclpy.node import Node  # noqa: E402

from emotion_ros.ros import compat  # noqa: E402
from emotion_ros.ros.node_utils import reliable_qos  # noqa: E402
from emotion_ros.tools.bag_common import import_msg_class  # noqa: E402

PKG_ROOT = Path(__file__).resolve().parents[1]
REPO = PKG_ROOT.parent
PROFILE = str(PKG_ROOT / "config" / "fastdds_shm.xml")
OLD, NEW = "FASTRTPS_DEFAULT_PROFILES_FILE", "FASTDDS_DEFAULT_PROFILES_FILE"
INTERFACE_PACKAGES = ("emotion_msgs", "audio_common_msgs", "hri_msgs")


# ----------------------------------------------------------------------------------------------- profile ---

def test_mirror_on_jazzy_gives_both_names_the_fast_dds_3_value():
    env = {NEW: "/a.xml"}
    assert compat.mirror_fastdds_profile(env, "jazzy") == "/a.xml" and env == {NEW: "/a.xml", OLD: "/a.xml"}
    env = {NEW: "/udp.xml", OLD: "/shm.xml"}  # e.g. a launch file chose udp over the shell's shm: the new name wins
    compat.mirror_fastdds_profile(env, "jazzy")
    assert env == {NEW: "/udp.xml", OLD: "/udp.xml"}
    env = {OLD: "/jazzy.xml"}  # set by hand the Jazzy way
    assert compat.mirror_fastdds_profile(env, "jazzy") == "/jazzy.xml" and env[NEW] == "/jazzy.xml"
    env = {"OTHER": "x"}
    assert compat.mirror_fastdds_profile(env, "jazzy") is None and env == {"OTHER": "x"}
    assert compat.fastdds_profile_env("/p.xml", "jazzy") == {NEW: "/p.xml", OLD: "/p.xml"}


def test_mirror_on_kilted_sets_only_the_fast_dds_3_name():
    env = {NEW: "/a.xml"}
    assert compat.mirror_fastdds_profile(env, "kilted") == "/a.xml" and env == {NEW: "/a.xml"}
    env = {NEW: "/a.xml", OLD: "/a.xml"}  # a Jazzy-style mirror inherited from a shell: dropped (Fast DDS 3 warns)
    compat.mirror_fastdds_profile(env, "kilted")
    assert env == {NEW: "/a.xml"}
    env = {OLD: "/old.xml"}  # set by hand the old way
    assert compat.mirror_fastdds_profile(env, "kilted") == "/old.xml" and env == {NEW: "/old.xml"}
    env = {NEW: "/udp.xml", OLD: "/mine.xml"}  # two different values set by someone: theirs to keep
    compat.mirror_fastdds_profile(env, "kilted")
    assert env == {NEW: "/udp.xml", OLD: "/mine.xml"}
    assert compat.fastdds_profile_env("/p.xml", "kilted") == {NEW: "/p.xml"}


SEGMENT = textwrap.dedent("""
    import os, sys
    import emotion_ros.ros  # noqa: F401  (what every emotion_ros process imports before its first node)
    import rclpy
    from rclpy.node import Node
    rclpy.init()
    node = Node("compat_profile_probe")
    segs = [int(l.split()[0].split("-")[1], 16) - int(l.split()[0].split("-")[0], 16)
            for l in open("/proc/self/maps") if "/dev/shm/fastdds_" in l or "/dev/shm/fastrtps_" in l]
    print("SHM_SEGMENT_MAX", max(segs) if segs else 0, flush=True)
    node.destroy_node()
    rclpy.shutdown()
""")


@pytest.mark.parametrize("var", [NEW, OLD])
def test_a_profile_set_under_either_name_reaches_this_distributions_fast_dds(var, tmp_path):
    """Jazzy's Fast DDS 2.14 ignored FASTDDS_DEFAULT_PROFILES_FILE (the one emotion_ros sets): 540 KiB default segment
    instead of the profile's 16 MiB. Only one of the two names is set here; importing emotion_ros.ros sets the other."""
    script = tmp_path / "probe.py"
    script.write_text(SEGMENT)
    env = {k: v for k, v in os.environ.items() if k not in (OLD, NEW)}
    env[var] = PROFILE
    env["PYTHONPATH"] = str(PKG_ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    p = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    seg = int(p.stdout.split("SHM_SEGMENT_MAX")[1].split()[0])
    assert seg >= 16 * 1024 * 1024, f"{compat.ros_distro()}: {var} set, largest Fast DDS segment {seg} bytes"


# ----------------------------------------------------------------------------------------------- hashes ----

def test_ros_distro_is_the_one_the_venv_was_set_up_for():
    distro = compat.ros_distro()
    assert distro in ("kilted", "jazzy")
    mark = Path(sys.prefix) / ".emotion_ros_distro"  # written by scripts/setup.sh
    if mark.is_file():
        assert mark.read_text().strip() == distro


def _msg_types():
    return [f"{pkg}/msg/{f.stem}" for pkg in INTERFACE_PACKAGES for f in sorted((REPO / pkg / "msg").glob("*.msg"))]


def _source_hashes(types):
    """RIHS01 hashes from the .msg sources, with rosbags' Kilted standard types: the same reference on both
    distributions, so equal hashes on each mean equal hashes between them."""
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore
    store = get_typestore(Stores.ROS2_KILTED)
    defs = {}
    for t in types:
        pkg, _, name = t.split("/")
        defs.update(get_types_from_msg((REPO / pkg / "msg" / f"{name}.msg").read_text(encoding="utf-8"), t))
    store.register(defs)
    return {t: store.hash_rihs01(t) for t in types}


@pytest.fixture(scope="module")
def node():
    ctx = Context()
    rclpy.init(context=ctx)
    n = Node("compat_type_hashes", context=ctx)
    yield n
    n.destroy_node()
    rclpy.shutdown(context=ctx)


def test_type_hashes_on_the_graph_are_those_of_the_msg_sources(node):
    types = _msg_types()
    assert len(types) >= 11 and "hri_msgs/msg/Expression" in types and "emotion_msgs/msg/EmotionState" in types
    want = _source_hashes(types)
    got = {}
    for i, t in enumerate(types):
        topic = f"/compat_hash_{os.getpid()}_{i}"
        node.create_publisher(import_msg_class(t), topic, reliable_qos(1))
        infos = node.get_publishers_info_by_topic(topic)
        assert len(infos) == 1 and infos[0].topic_type == t
        got[t] = str(infos[0].topic_type_hash)
    assert got == want, compat.ros_distro()
