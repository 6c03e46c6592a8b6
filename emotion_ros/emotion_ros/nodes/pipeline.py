"""pipeline: the whole emotion_ros graph in one process (every node on one executor).

The same nodes, topics and parameters as ``ros2 launch emotion_ros emotion.launch.py``, for
machines without ``ros2 launch`` and for robots that want one process.  Lifecycle nodes are
driven to active (their ``autostart`` parameter, default true).

    ros2 run emotion_ros pipeline                                  # camera 0 + sound card
    ros2 run emotion_ros pipeline --video clip.mp4 --audio clip.wav
    ros2 run emotion_ros pipeline --no-camera --no-microphone      # your own image_raw / audio
    ros2 run emotion_ros pipeline --duration 30 --device cpu --ros-args -r image_raw:=/camera/image

Parameters come from ``config/emotion.yaml`` unless ``--params-file`` is given; anything after
``--ros-args`` is passed to rclpy as usual (remappings apply to every node).
"""
from __future__ import annotations

import argparse
import sys
import threading
from typing import Callable, Dict, List, Optional, Sequence

from emotion_ros import paths
from emotion_ros.ros.lifecycle import exit_process, request_stop, run_node


def parse_args(argv: Sequence[str]):
    argv = list(argv)
    ros_args: List[str] = []
    if "--ros-args" in argv:
        i = argv.index("--ros-args")
        argv, ros_args = argv[:i], argv[i:]
    argv = [a for a in argv if a != "--"]
    p = argparse.ArgumentParser(prog="pipeline", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--params-file", default=paths.config_path("emotion.yaml"),
                   help="ROS parameters file for every node (default: the package's config/emotion.yaml)")
    p.add_argument("--no-camera", action="store_true", help="don't start camera_node")
    p.add_argument("--no-microphone", action="store_true", help="don't start microphone_node")
    p.add_argument("--no-behaviour", action="store_true", help="don't start behaviour_node")
    p.add_argument("--video", default=None, help="camera source: device index, video file or pipeline")
    p.add_argument("--audio", default=None, help="audio file played as the microphone")
    p.add_argument("--loop", action="store_true", help="play --video and --audio files in a loop")
    p.add_argument("--device", default=None, help="auto | cpu | cuda for the perception and fusion nodes")
    p.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds (0: run until Ctrl-C)")
    return p.parse_args(argv), ros_args


def rclpy_args(opts, ros_args: List[str]) -> List[str]:
    """The rclpy arguments of the process: the params file, then the user's ``--ros-args``."""
    out = ["pipeline", "--ros-args"]
    if opts.params_file:
        out += ["--params-file", opts.params_file]
    if ros_args:
        out += ros_args[1:] if ros_args[0] == "--ros-args" else ros_args
    return out


def overrides(opts) -> Dict[str, Dict[str, object]]:
    """Per-node parameter overrides from the command-line options (they win over the params file)."""
    out: Dict[str, Dict[str, object]] = {}
    if opts.video is not None:
        out.setdefault("camera_node", {})["source"] = opts.video
    if opts.audio is not None:
        out.setdefault("microphone_node", {})["file"] = opts.audio
    if opts.loop:
        out.setdefault("camera_node", {})["loop"] = True
        out.setdefault("microphone_node", {})["loop"] = True
    if opts.device:
        for n in ("face_node", "voice_node", "fusion_node"):
            out.setdefault(n, {})["device"] = opts.device
    return out


def make_nodes(camera: bool = True, microphone: bool = True, behaviour: bool = True,
               extra: Sequence[Callable[[], object]] = (),
               params: Optional[Dict[str, Dict[str, object]]] = None) -> list:
    """Build the graph's nodes (after rclpy.init).  Sources first, so their topics exist early."""
    from rclpy.parameter import Parameter

    from emotion_ros.nodes.behaviour import BehaviourNode
    from emotion_ros.nodes.face import FaceNode
    from emotion_ros.nodes.fusion import FusionNode
    from emotion_ros.nodes.voice import VoiceNode

    params = params or {}

    def build(cls, name):
        kv = params.get(name, {})
        return cls(parameter_overrides=[Parameter(k, value=v) for k, v in kv.items()]) if kv else cls()

    nodes = []
    if camera:
        from emotion_ros.nodes.camera import CameraNode
        nodes.append(build(CameraNode, "camera_node"))
    if microphone:
        from emotion_ros.nodes.microphone import MicrophoneNode
        nodes.append(build(MicrophoneNode, "microphone_node"))
    nodes += [build(FaceNode, "face_node"), build(VoiceNode, "voice_node"), build(FusionNode, "fusion_node")]
    if behaviour:
        nodes.append(build(BehaviourNode, "behaviour_node"))
    nodes += [make() for make in extra]
    return nodes


def run_pipeline(opts, ros_args: List[str], extra: Sequence[Callable[[], object]] = ()) -> int:
    """Run the graph (plus ``extra`` node factories) until Ctrl-C or ``opts.duration`` seconds after every
    node is active."""
    timer: Optional[threading.Timer] = None
    if opts.duration and opts.duration > 0:
        timer = threading.Timer(opts.duration, request_stop)
        timer.daemon = True

    def factory():
        return make_nodes(camera=not opts.no_camera, microphone=not opts.no_microphone,
                          behaviour=not opts.no_behaviour, extra=extra, params=overrides(opts))

    try:
        return run_node(factory, args=rclpy_args(opts, ros_args), on_ready=timer.start if timer else None)
    finally:
        if timer is not None:
            timer.cancel()


def main(argv: Optional[Sequence[str]] = None) -> None:
    opts, ros_args = parse_args(sys.argv[1:] if argv is None else argv)
    exit_process(run_pipeline(opts, ros_args))


if __name__ == "__main__":
    main()
