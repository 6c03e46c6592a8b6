"""config/fastdds_shm.xml: the profile loads (16 MiB shared-memory segment) and 640x480 images cross processes."""

import os
import random
import subprocess
import sys
import textwrap
import time

os.environ.setdefault("ROS_DOMAIN_ID", str(random.randint(1, 200)))
os.environ.setdefault("ROS_HOME", f"/tmp/emotion_ros-test-roshome-{os.getpid()}")

import numpy as np  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from emotion_ros.ros.convert import image_to_numpy  # noqa: E402
from emotion_ros.ros.node_utils import reliable_qos  # noqa: E402

PKG_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROFILE = os.path.join(PKG_ROOT, "config", "fastdds_shm.xml")
N = 30

PUBLISHER = textwrap.dedent("""
    import sys, time
    import numpy as np, rclpy
    from rclpy.node import Node
    from sensor_msgs.msg import Image
    from emotion_ros.ros.convert import numpy_to_image
    from emotion_ros.ros.node_utils import reliable_qos, wait_for_subscribers
    topic, n = sys.argv[1], int(sys.argv[2])
    rclpy.init()
    node = Node("shm_image_pub")
    pub = node.create_publisher(Image, topic, reliable_qos(10))
    assert wait_for_subscribers(pub, 20.0), "no subscriber"
    time.sleep(0.3)
    rng = np.random.default_rng(1)
    for i in range(n):
        img = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
        img[0, 0] = (i, i, i)
        pub.publish(numpy_to_image(img, stamp=node.get_clock().now().to_msg(), frame_id=str(i)))
        time.sleep(1 / 30)
    segs = [int(l.split()[0].split("-")[1], 16) - int(l.split()[0].split("-")[0], 16)
            for l in open("/proc/self/maps") if "/dev/shm/fastdds_" in l or "/dev/shm/fastrtps_" in l]
    print("SHM_SEGMENT_MAX", max(segs) if segs else 0, flush=True)
    time.sleep(1.0)
    node.destroy_node(); rclpy.shutdown()
""")


def test_profile_is_valid_xml_with_a_16mib_shm_segment():
    import xml.etree.ElementTree as ET
    ns = {"d": "http://www.eprosima.com"}
    root = ET.parse(PROFILE).getroot()
    descs = {d.find("d:transport_id", ns).text: d for d in root.iter("{http://www.eprosima.com}transport_descriptor")}
    kinds = {d.find("d:type", ns).text for d in descs.values()}
    assert kinds == {"SHM", "UDPv4"}
    shm = next(d for d in descs.values() if d.find("d:type", ns).text == "SHM")
    assert int(shm.find("d:segment_size", ns).text) >= 16 * 1024 * 1024
    part = root.find(".//d:participant", ns)
    assert part.get("is_default_profile") == "true"
    assert part.find(".//d:useBuiltinTransports", ns).text == "false"
    assert {t.text for t in part.findall(".//d:userTransports/d:transport_id", ns)} == set(descs)


def test_640x480_images_cross_processes_over_the_shm_profile(ctx, tmp_path):
    topic = f"/shm_images_{os.getpid()}"
    node = Node(f"shm_image_sub_{os.getpid()}", context=ctx)
    got = []
    node.create_subscription(Image, topic, got.append, reliable_qos(10))
    script = tmp_path / "pub.py"
    script.write_text(PUBLISHER)
    env = dict(os.environ, FASTDDS_DEFAULT_PROFILES_FILE=PROFILE,
               PYTHONPATH=PKG_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.Popen([sys.executable, str(script), topic, str(N)], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    ex = SingleThreadedExecutor(context=ctx)
    ex.add_node(node)
    try:
        end = time.monotonic() + 60
        while (p.poll() is None or len(got) < N) and time.monotonic() < end:
            ex.spin_once(timeout_sec=0.02)
            if p.poll() is not None and len(got) < N:
                ex.spin_once(timeout_sec=0.5)
                break
        out = p.communicate(timeout=20)[0]
    finally:
        if p.poll() is None:
            p.kill()
        ex.shutdown()
        node.destroy_node()
    assert p.returncode == 0, out
    assert "XMLPARSER" not in out and "Error" not in out, out  # the profile parsed
    seg = int(out.split("SHM_SEGMENT_MAX")[1].split()[0])
    assert seg >= 16 * 1024 * 1024, out  # the 16 MiB segment of the profile is in use (default: 512 KiB)
    assert len(got) == N  # reliable: all of them
    rng = np.random.default_rng(1)
    for i, m in enumerate(got):
        ref = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
        ref[0, 0] = (i, i, i)
        assert m.header.frame_id == str(i)
        np.testing.assert_array_equal(image_to_numpy(m), ref)
