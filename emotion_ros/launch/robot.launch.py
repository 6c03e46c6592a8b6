"""The robot's half of the emotion_ros graph: camera, microphone and behaviour; the models run on an inference
server (server.launch.py) on the same network, same ROS_DOMAIN_ID.

  ros2 launch emotion_ros robot.launch.py domain_id:=42                          # camera 0 + default microphone
  ros2 launch emotion_ros robot.launch.py video:=clip.mp4 audio:=clip.wav loop:=true jpeg_quality:=70
  ros2 launch emotion_ros robot.launch.py --show-args                            # every argument, described

The camera publishes JPEG on ``image_raw/compressed`` (1.7 MB/s at 640x480, 30 fps, quality 80, instead of 27.6 MB/s
raw), best effort, keep last 1: a frame lost on the link is not resent, the next one follows. ``publish_raw:=true``
adds the raw ``image_raw`` for consumers on the robot. Audio (32 kB/s) stays reliable, ``audio_info`` latched, so a
voice node started later on the server still learns the format. The behaviour node subscribes ``emotion/state``
from the server and publishes ``emotion/decision``, ``emotion/say`` and ``emotion/expression`` (latched) on the
robot. Discovery, domain and clocks: README, "Robot and server on two machines".

A process of this half that exits with an error ends the launch with one line naming it (exit code 1); a source
that reaches the end of its file exits 0 and the rest keeps running.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

from emotion_ros.launch_utils import (check_files, end_launch_on_failure, network_arguments,
                                      nodes_end_with_launch)


def generate_launch_description():
    share = get_package_share_directory("emotion_ros")
    cfg = LaunchConfiguration
    args = [
        DeclareLaunchArgument("params_file", default_value=os.path.join(share, "config", "emotion.yaml"),
                              description="parameters of every node (ROS 2 YAML, one section per node)"),
        DeclareLaunchArgument("rules_file", default_value=os.path.join(share, "config", "behaviour_rules.yaml"),
                              description="behaviour rule table (YAML)"),
        DeclareLaunchArgument("camera", default_value="true",
                              description="start the camera source node (true/false; false: bring your own "
                                          "image_topic/compressed)"),
        DeclareLaunchArgument("video", default_value="0",
                              description="camera source: device index, video file, URL or GStreamer pipeline"),
        DeclareLaunchArgument("microphone", default_value="true",
                              description="start the microphone source node (true/false; false: bring your own "
                                          "audio topic)"),
        DeclareLaunchArgument("audio", default_value="",
                              description="audio file played as if it were the microphone (empty: the sound card)"),
        DeclareLaunchArgument("loop", default_value="false",
                              description="video/audio files: start again at the end (true/false)"),
        DeclareLaunchArgument("jpeg_quality", default_value="80",
                              description="JPEG quality of image_topic/compressed, 1-100 (bytes and face accuracy "
                                          "per quality: docs/BENCHMARKS.md)"),
        DeclareLaunchArgument("publish_raw", default_value="false",
                              description="also publish the raw image_topic (true/false) for consumers on the robot"),
        DeclareLaunchArgument("image_topic", default_value="image_raw",
                              description="base image topic: JPEG on <image_topic>/compressed, raw on <image_topic>"),
        DeclareLaunchArgument("audio_topic", default_value="audio",
                              description="audio_common_msgs/AudioDataStamped topic of the microphone"),
        DeclareLaunchArgument("audio_info_topic", default_value="audio_info",
                              description="audio_common_msgs/AudioInfo topic (latched) describing audio_topic"),
        DeclareLaunchArgument("behaviour", default_value="true",
                              description="start the behaviour node (true/false)"),
    ]

    def text(arg):  # typed, so that video:=0 stays a string and loop:=1 / True / true are all booleans
        return ParameterValue(cfg(arg), value_type=str)
    params = cfg("params_file")
    loop = ParameterValue(cfg("loop"), value_type=bool)
    camera = {"source": text("video"), "loop": loop, "compressed": True, "reliable": False,
              "publish_raw": ParameterValue(cfg("publish_raw"), value_type=bool),
              "jpeg_quality": ParameterValue(cfg("jpeg_quality"), value_type=int)}
    processes = [
        Node(package="emotion_ros", executable="camera_node", name="camera_node", output="screen",
             parameters=[params, camera], remappings=[("image_raw", cfg("image_topic"))],
             condition=IfCondition(cfg("camera"))),
        Node(package="emotion_ros", executable="microphone_node", name="microphone_node", output="screen",
             parameters=[params, {"file": text("audio"), "loop": loop}],
             remappings=[("audio", cfg("audio_topic")), ("audio_info", cfg("audio_info_topic"))],
             condition=IfCondition(cfg("microphone"))),
        Node(package="emotion_ros", executable="behaviour_node", name="behaviour_node", output="screen",
             parameters=[params, {"rules_file": text("rules_file")}], condition=IfCondition(cfg("behaviour"))),
    ]
    return LaunchDescription(args + network_arguments(share)
                             + [nodes_end_with_launch(), end_launch_on_failure(),
                                check_files(["params_file", "rules_file"])] + processes)
