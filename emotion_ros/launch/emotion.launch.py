"""Start the emotion_ros graph.

  ros2 launch emotion_ros emotion.launch.py                       # camera 0 + default microphone
  ros2 launch emotion_ros emotion.launch.py video:=clip.mp4 audio:=clip.wav loop:=true
  ros2 launch emotion_ros emotion.launch.py camera:=false microphone:=false   # use your own image_raw / audio
  ros2 launch emotion_ros emotion.launch.py device:=cuda params_file:=/path/my.yaml record:=true bag:=/tmp/session
  ros2 launch emotion_ros emotion.launch.py hri:=true              # + ROS4HRI (REP-155) topics under /humans/
  ros2 launch emotion_ros emotion.launch.py --show-args           # every argument with its description

The face, voice and fusion nodes are lifecycle nodes (launched as ``LifecycleNode``); ``autostart: true`` (set
here) drives each through configure and activate at start-up, and a node whose start fails ends its process with
exit code 1.  Any process of the graph that exits with a non-zero code (a failed start, e.g. ``device:=cuda``
without a GPU; a missing model file; a crash) ends the whole launch with one line naming it, and ``ros2 launch``
exits 1: never half a graph left running.  A source that reaches the end of its file exits 0 and the rest keeps
running.  ``ros2 lifecycle set /face_node deactivate`` pauses a node without killing it.
"""
import os
import sys

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess, SetEnvironmentVariable, UnsetEnvironmentVariable
from launch.conditions import IfCondition, UnlessCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode, Node
from launch_ros.parameter_descriptions import ParameterValue

from emotion_ros.launch_utils import check_files, end_launch_on_failure, nodes_end_with_launch
from emotion_ros.ros.compat import FASTDDS_PROFILE_VARS, profile_vars

BAG_TOPICS = ["emotion/faces", "emotion/voice", "emotion/state", "emotion/states", "emotion/decision"]


def generate_launch_description():
    share = get_package_share_directory("emotion_ros")
    cfg = LaunchConfiguration
    args = [
        DeclareLaunchArgument("params_file", default_value=os.path.join(share, "config", "emotion.yaml"),
                              description="parameters of every node (ROS 2 YAML, one section per node)"),
        DeclareLaunchArgument("rules_file", default_value=os.path.join(share, "config", "behaviour_rules.yaml"),
                              description="behaviour rule table (YAML)"),
        DeclareLaunchArgument("device", default_value="auto",
                              description="torch device of the face, voice and fusion models: "
                                          "auto | cpu | cuda | cuda:N"),
        DeclareLaunchArgument("camera", default_value="true",
                              description="start the camera source node "
                                          "(true/false; false: bring your own image topic)"),
        DeclareLaunchArgument("video", default_value="0",
                              description="camera source: device index, video file, URL or GStreamer pipeline"),
        DeclareLaunchArgument("microphone", default_value="true",
                              description="start the microphone source node "
                                          "(true/false; false: bring your own audio topic)"),
        DeclareLaunchArgument("audio", default_value="",
                              description="audio file played as if it were the microphone (empty: the sound card)"),
        DeclareLaunchArgument("loop", default_value="false",
                              description="video/audio files: start again at the end (true/false)"),
        DeclareLaunchArgument("image_topic", default_value="image_raw",
                              description="sensor_msgs/Image topic the camera publishes and the face node reads"),
        DeclareLaunchArgument("audio_topic", default_value="audio",
                              description="audio_common_msgs/AudioDataStamped topic of the microphone and voice node"),
        DeclareLaunchArgument("audio_info_topic", default_value="audio_info",
                              description="audio_common_msgs/AudioInfo topic (latched) describing audio_topic"),
        DeclareLaunchArgument("record", default_value="false",
                              description="record a rosbag of the session (true/false)"),
        DeclareLaunchArgument("bag", default_value="emotion_session",
                              description="bag folder when record:=true (must not exist yet)"),
        DeclareLaunchArgument("hri", default_value="false",
                              description="ROS4HRI (REP-155) output of the face and fusion nodes (true/false): "
                                          "/humans/faces/tracked, /humans/faces/<id>/expression|roi|cropped, and "
                                          "/humans/persons/<id>/expression for persons a person manager matched "
                                          "to a face; overrides params_file's hri"),
        DeclareLaunchArgument("shm_transport", default_value="true",
                              description="true: emotion_ros' Fast DDS profile with 16 MiB shared-memory segments for large "
                                          "images; false: no profile of ours (Fast DDS's built-in transports)"),
    ]
    params = cfg("params_file")
    image_remap = [("image_raw", cfg("image_topic"))]
    audio_remap = [("audio", cfg("audio_topic")), ("audio_info", cfg("audio_info_topic"))]
    # shm_transport true: emotion_ros' 16 MiB shared-memory profile; false: none of ours (Fast DDS's built-in
    # transports), also over a profile the shell set and over the one the nodes would set themselves when unset.
    shm = [SetEnvironmentVariable(var, os.path.join(share, "config", "fastdds_shm.xml"),
                                  condition=IfCondition(cfg("shm_transport")))
           for var in profile_vars()]   # Kilted: Fast DDS 3's name; Jazzy: also Fast DDS 2's (ros/compat.py)
    shm += [UnsetEnvironmentVariable(var, condition=UnlessCondition(cfg("shm_transport")))
            for var in FASTDDS_PROFILE_VARS]   # both names, whichever the shell set
    shm.append(SetEnvironmentVariable("EMOTION_ROS_FASTDDS_PROFILE", "0",
                                      condition=UnlessCondition(cfg("shm_transport"))))
    # Typed, so that video:=0 stays the string the camera expects and loop:=1 / True / true are all booleans.
    def text(arg):
        return ParameterValue(cfg(arg), value_type=str)
    loop = ParameterValue(cfg("loop"), value_type=bool)
    perception = {"device": text("device"), "autostart": True}
    hri = {"hri": ParameterValue(cfg("hri"), value_type=bool)}
    processes = [
        Node(package="emotion_ros", executable="camera_node", name="camera_node", output="screen",
             parameters=[params, {"source": text("video"), "loop": loop}], remappings=image_remap,
             condition=IfCondition(cfg("camera"))),
        Node(package="emotion_ros", executable="microphone_node", name="microphone_node", output="screen",
             parameters=[params, {"file": text("audio"), "loop": loop}], remappings=audio_remap,
             condition=IfCondition(cfg("microphone"))),
        LifecycleNode(package="emotion_ros", executable="face_node", name="face_node", namespace="",
                      output="screen", parameters=[params, perception, hri], remappings=image_remap),
        LifecycleNode(package="emotion_ros", executable="voice_node", name="voice_node", namespace="",
                      output="screen", parameters=[params, perception], remappings=audio_remap),
        LifecycleNode(package="emotion_ros", executable="fusion_node", name="fusion_node", namespace="",
                      output="screen", parameters=[params, perception, hri]),
        Node(package="emotion_ros", executable="behaviour_node", name="behaviour_node", output="screen",
             parameters=[params, {"rules_file": text("rules_file")}]),
        ExecuteProcess(
            name="bag_record",
            cmd=[sys.executable, "-m", "emotion_ros.tools.bag", "record", cfg("bag"),
                 "--topics", cfg("image_topic"), cfg("audio_topic"), cfg("audio_info_topic"), *BAG_TOPICS],
            output="screen", condition=IfCondition(cfg("record"))),
    ]
    return LaunchDescription(args + shm + [nodes_end_with_launch(), end_launch_on_failure(),
                                           check_files(["params_file", "rules_file"])]
                             + processes)
