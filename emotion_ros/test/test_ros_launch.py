"""``ros2 launch emotion_ros emotion.launch.py`` as a user runs it, over real DDS.

One launched graph (video + audio files, looping, device:=cpu, a rule table that fires on any emotion, record:=1,
hri:=true) is shared by the first checks: EmotionState at its rate, a BehaviourDecision, the ROS4HRI topics in
``ros2 topic list``, the lifecycle nodes active
(``ros2 lifecycle get``), ``ros2 param get /face_node device``, then Ctrl-C (SIGINT to the process group) ends every
process and leaves a bag with the recorded topics.  Then the launch arguments one by one: camera:=false
microphone:=false fed by ``ros2 run`` sources (with record:=True), a missing params_file, a node that fails to
start (device:=cuda without a GPU).
"""
from __future__ import annotations

import os
import re
import time

import pytest
import yaml

from launch_helpers import (LIFECYCLE_NODES, NODES, lifecycle_states, make_media, node_names, requires_ros2,
                            ros2, ros2_launch, ros2_run, ros2_until, write_any_emotion_rules)
from robust_helpers import Graph

from emotion_msgs.msg import BehaviourDecision, EmotionState  # noqa: E402

from emotion_ros import paths  # noqa: E402
from emotion_ros.ros.node_utils import reliable_qos  # noqa: E402

MODELS = [paths.model_path(n) for n in ("face.pt", "voice.pt", "fusion.pt")]
pytestmark = [requires_ros2,
              pytest.mark.skipif(not all(os.path.isfile(m) for m in MODELS), reason="the shipped models are missing")]

BAG_TOPICS = ["image_raw", "audio", "audio_info", "emotion/faces", "emotion/voice", "emotion/state",
              "emotion/states", "emotion/decision"]
FUSION_RATE_HZ = 10.0     # fusion_node rate in config/emotion.yaml (steady publishing; faces add more)
UP_TIMEOUT = 300          # torch imports and model loads of several processes on 2 busy cores


def _bag_topics(bag: str) -> dict:
    """{topic (no leading /): message count} from a rosbag2 folder's metadata.yaml."""
    with open(os.path.join(bag, "metadata.yaml")) as f:
        meta = yaml.safe_load(f)["rosbag2_bagfile_information"]
    return {t["topic_metadata"]["name"].lstrip("/"): int(t["message_count"])
            for t in meta["topics_with_message_count"]}


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    return make_media(str(tmp_path_factory.mktemp("launch_media")))


@pytest.fixture(scope="module")
def graph():
    g = Graph("launch_tester")
    yield g
    g.close()


@pytest.fixture(scope="module")
def launched(tmp_path_factory, media, graph):
    d = tmp_path_factory.mktemp("launch")
    rules = write_any_emotion_rules(str(d / "rules.yaml"))
    graph.subscribe("emotion/state", EmotionState, reliable_qos(200))
    graph.subscribe("emotion/decision", BehaviourDecision, reliable_qos(100))
    launch = ros2_launch([f"video:={media['video']}", f"audio:={media['audio']}", "loop:=true", "device:=cpu",
                          f"rules_file:={rules}", "record:=1", f"bag:={d / 'session'}", "hri:=true"],
                         str(d / "launch.log"))
    launch.bag = str(d / "session")
    yield launch
    launch.stop(timeout=60)
    launch.kill()   # whatever a failed test left


def _wait_states(graph, launch, timeout=UP_TIMEOUT):
    ok = graph.spin_until(lambda: any(m.face_weight > 0 for m in graph.messages("emotion/state"))
                          or not launch.alive(), timeout)
    assert ok and launch.alive(), f"no EmotionState with a face from the launched graph:\n{launch.tail()}"


def test_launch_publishes_emotion_state_at_its_rate(launched, graph):
    _wait_states(graph, launched)
    graph.clear("emotion/state")
    t0 = time.monotonic()
    graph.spin_for(5.0)
    n = len(graph.messages("emotion/state"))
    rate = n / (time.monotonic() - t0)
    # steady 10 Hz plus one per face result: well above a third of the steady rate even on a loaded machine
    assert rate >= FUSION_RATE_HZ / 3, f"emotion/state at {rate:.1f} Hz ({n} messages)\n{launched.tail()}"
    assert any(m.person_id and m.face_weight > 0 for m in graph.messages("emotion/state"))


def test_launch_behaviour_decision_when_a_rule_fires(launched, graph):
    _wait_states(graph, launched)
    # a decision for a person seen on camera; voice-only states (person_id "", e.g. a sliding window of speech before
    # the first face result) may fire rules too, by design (core/behaviour.py), and carry no person
    ok = graph.spin_until(lambda: any(m.rule.startswith("test_") and m.person_id
                                      for m in graph.messages("emotion/decision")), 60)
    assert ok, f"no BehaviourDecision for a person from the test rule table:\n{launched.tail()}"
    fired = [m for m in graph.messages("emotion/decision") if m.rule.startswith("test_")]
    assert all(d.rule == f"test_{d.emotion}" for d in fired), [(d.rule, d.emotion) for d in fired]


def test_launch_hri_true_publishes_the_rep155_face_topics(launched, graph):
    """hri:=true: /humans/faces/tracked lists the face of the clip and its expression topic is advertised
    (test_hri.py checks the content of these topics)."""
    from hri_msgs.msg import IdsList
    _wait_states(graph, launched)
    tracked = graph.subscribe("/humans/faces/tracked", IdsList, reliable_qos(50))
    assert graph.spin_until(lambda: any(m.ids for _, m in list(tracked)), 60), launched.tail()
    res = ros2_until(["topic", "list", "-t", "--no-daemon", "--spin-time", "3"],
                     lambda r: re.search(r"^/humans/faces/\w+/expression \[hri_msgs/msg/Expression\]$", r.stdout, re.M))
    assert "/humans/faces/tracked [hri_msgs/msg/IdsList]" in res.stdout.splitlines(), res.stdout
    assert re.search(r"^/humans/faces/\w+/expression \[hri_msgs/msg/Expression\]$", res.stdout, re.M), res.stdout


def test_launch_lifecycle_nodes_are_active(launched):
    states = lifecycle_states([f"/{n}" for n in LIFECYCLE_NODES])
    assert all(s.startswith("active") for s in states.values()), f"{states}\n{launched.tail()}"


def test_launch_param_get_face_node_device(launched):
    res = ros2_until(["param", "get", "/face_node", "device", "--no-daemon", "--spin-time", "3"],
                     lambda r: "value is" in r.stdout)
    assert res.stdout.strip() == "String value is: cpu", res.stdout


def test_launch_ctrl_c_ends_every_process_and_the_bag_holds_the_topics(launched, graph):
    _wait_states(graph, launched)
    assert set(NODES) <= {n.lstrip("/") for n in node_names(want=[f"/{n}" for n in NODES])}
    code = launched.stop(timeout=60)
    out = launched.output()
    assert code == 0, f"ros2 launch exit code {code}:\n{out[-6000:]}"
    assert launched.leftovers() == []
    assert "process has died" not in out, out[-6000:]
    for node in NODES:
        assert f"[{node}-" in out and "process has finished cleanly" in out
    topics = _bag_topics(launched.bag)
    assert set(BAG_TOPICS) <= set(topics), topics
    for t in ("image_raw", "audio", "emotion/faces", "emotion/state"):
        assert topics[t] > 0, topics


def test_launch_without_sources_runs_on_ros2_run_sources(tmp_path, media, graph):
    """camera:=false microphone:=false (record:=True): the graph has no source nodes and works on the topics of
    ``ros2 run`` sources; face/voice/fusion/behaviour also start under ``ros2 run`` (own namespace)."""
    launch = ros2_launch(["camera:=false", "microphone:=false", "device:=cpu", "record:=True",
                          f"bag:={tmp_path / 'bag'}"], str(tmp_path / "launch.log"))
    runs = [ros2_run("camera_node", ["--ros-args", "-p", f"source:={media['video']}", "-p", "loop:=true"],
                     str(tmp_path / "camera.log")),
            ros2_run("microphone_node", ["--ros-args", "-p", f"file:={media['audio']}", "-p", "loop:=true"],
                     str(tmp_path / "microphone.log"))]
    for exe in ("face_node", "voice_node", "fusion_node", "behaviour_node"):
        runs.append(ros2_run(exe, ["--ros-args", "-r", "__ns:=/run_check", "-p", "device:=cpu"]
                             if exe != "behaviour_node" else ["--ros-args", "-r", "__ns:=/run_check"],
                             str(tmp_path / f"{exe}.log")))
    try:
        graph.clear("emotion/state")
        _wait_states(graph, launch)
        want = [f"/{n}" for n in NODES] + [f"/run_check/{n}" for n in NODES[2:]]
        names = node_names(want=want)
        assert set(want) <= set(names), names
        states = lifecycle_states([f"/run_check/{n}" for n in LIFECYCLE_NODES])
        assert all(s.startswith("active") for s in states.values()), f"ros2 run: {states}"
        for r in runs:
            assert r.alive(), f"{r.cmd}:\n{r.tail()}"
        out = launch.output()
        assert "[camera_node-" not in out and "[microphone_node-" not in out, out[-4000:]
        code = launch.stop(timeout=60)
        assert code == 0, f"ros2 launch exit code {code}:\n{launch.tail()}"
        assert launch.leftovers() == []
        for r in runs:
            assert r.stop(timeout=30) == 0, f"{r.cmd}:\n{r.tail()}"
            assert r.leftovers() == []
        topics = _bag_topics(str(tmp_path / "bag"))
        assert topics.get("image_raw", 0) > 0 and topics.get("emotion/state", 0) > 0, topics
    finally:
        for b in [launch] + runs:
            b.stop(timeout=20)
            b.kill()


def test_launch_sigterm_to_the_launch_process_leaves_no_node_behind(tmp_path):
    """``docker stop`` / systemd send SIGTERM to ``ros2 launch`` alone; upstream launch then exits at once without
    stopping its processes (before 2026-12-02 all four nodes here kept running). The nodes follow it now, and so
    does the bag recorder (record:=1), which closes its bag."""
    import signal as sig

    bag = tmp_path / "bag"
    launch = ros2_launch(["camera:=false", "microphone:=false", "device:=cpu", "record:=1", f"bag:={bag}"],
                         str(tmp_path / "launch.log"))
    try:
        want = [f"/{n}" for n in NODES[2:]]
        assert launch.wait_output("autostart: node is active", UP_TIMEOUT), launch.tail()
        assert launch.wait_output("recording to", UP_TIMEOUT), launch.tail()
        names = node_names(want=want)
        assert set(want) <= set(names), names
        os.kill(launch.proc.pid, sig.SIGTERM)          # the launch process only, not its group
        assert launch.wait(30) is not None, launch.tail()
        left = launch.leftovers(grace=20)
        assert left == [], "\n".join(left) + "\n" + launch.tail()
        assert (bag / "metadata.yaml").is_file(), "the recorder must close its bag when it follows the launch"
    finally:
        launch.kill()


def test_launch_missing_params_file_ends_with_one_clear_error(tmp_path):
    missing = tmp_path / "nope.yaml"
    launch = ros2_launch([f"params_file:={missing}", "camera:=false", "microphone:=false"],
                         str(tmp_path / "launch.log"))
    code = launch.wait(120)
    out = launch.output()
    if code is None:
        launch.kill()
    assert code == 1, f"exit code {code}:\n{out[-4000:]}"
    errors = [ln for ln in out.splitlines() if "ERROR" in ln]
    assert len(errors) == 1 and f"params_file '{missing}' does not exist" in errors[0], out
    assert "process started" not in out, out      # no node ran on defaults
    assert launch.leftovers() == []


def test_launch_node_failing_to_start_ends_the_launch(tmp_path):
    """device:=cuda on a machine without a GPU: the perception nodes fail to start and exit non-zero, and the launch
    ends with one line naming the node, and exit code 1; nothing of the graph stays running."""
    import torch
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: device:=cuda starts")
    launch = ros2_launch(["device:=cuda", "camera:=false", "microphone:=false"], str(tmp_path / "launch.log"))
    code = launch.wait(UP_TIMEOUT)
    out = launch.output()
    if code is None:
        launch.kill()
    assert code == 1, f"exit code {code}:\n{out[-6000:]}"
    ended = [ln for ln in out.splitlines() if re.search(r"exited with code [1-9]", ln) and "ending the launch" in ln]
    assert len(ended) == 1 and any(f"{n}-" in ended[0] for n in LIFECYCLE_NODES), out[-6000:]
    assert "cuda" in out.lower()
    assert launch.leftovers() == []


def test_ros2_pkg_executables_lists_every_console_script():
    """``ros2 run emotion_ros <name>`` finds every command of the package (<prefix>/lib/emotion_ros/)."""
    with open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "setup.py")) as f:
        scripts = set(re.findall(r'"([\w\-]+)\s*=\s*[\w\.]+:\w+"', f.read()))
    res = ros2("pkg", "executables", "emotion_ros")
    listed = {line.split()[1] for line in res.stdout.splitlines() if line.startswith("emotion_ros ")}
    assert scripts and scripts <= listed, res.stdout
