"""The inference server's half of the emotion_ros graph: face, voice and fusion nodes (the models), fed by a robot
running robot.launch.py on the same network, same ROS_DOMAIN_ID.

  ros2 launch emotion_ros server.launch.py domain_id:=42 device:=cuda
  ros2 launch emotion_ros server.launch.py image_transport:=raw            # raw images (a wired link, >= 1 Gbit/s)
  ros2 launch emotion_ros server.launch.py --show-args                      # every argument, described

The face node reads ``image_raw/compressed`` (JPEG, best effort, keep last 1: always the newest frame), the voice
node ``audio`` (reliable) and the latched ``audio_info``; ``emotion/faces``, ``emotion/voice``, ``emotion/state``
and ``emotion/states`` go back reliable. The three are lifecycle nodes driven to active at start (``autostart``);
one that fails to start (a missing model, ``device:=cuda`` without a GPU) ends the launch with one line naming it
(exit code 1). Discovery, domain and clocks: README, "Robot and server on two machines".
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode
from launch_ros.parameter_descriptions import ParameterValue

from emotion_ros.launch_utils import (check_files, end_launch_on_failure, network_arguments,
                                      nodes_end_with_launch)


def generate_launch_description():
    share = get_package_share_directory("emotion_ros")
    cfg = LaunchConfiguration
    args = [
        DeclareLaunchArgument("params_file", default_value=os.path.join(share, "config", "emotion.yaml"),
                              description="parameters of every node (ROS 2 YAML, one section per node)"),
        DeclareLaunchArgument("device", default_value="auto",
                              description="torch device of the face, voice and fusion models: "
                                          "auto | cpu | cuda | cuda:N"),
        DeclareLaunchArgument("image_transport", default_value="compressed", choices=["compressed", "raw"],
                              description="images from the robot: compressed (<image_topic>/compressed, JPEG) | "
                                          "raw (<image_topic>, 27.6 MB/s at 640x480 30 fps)"),
        DeclareLaunchArgument("image_topic", default_value="image_raw",
                              description="base image topic the robot's camera publishes"),
        DeclareLaunchArgument("audio_topic", default_value="audio",
                              description="audio_common_msgs/AudioDataStamped topic of the robot's microphone"),
        DeclareLaunchArgument("audio_info_topic", default_value="audio_info",
                              description="audio_common_msgs/AudioInfo topic (latched) describing audio_topic"),
    ]
    params = cfg("params_file")
    perception = {"device": ParameterValue(cfg("device"), value_type=str), "autostart": True}
    face = dict(perception, image_transport=ParameterValue(cfg("image_transport"), value_type=str))
    processes = [
        LifecycleNode(package="emotion_ros", executable="face_node", name="face_node", namespace="",
                      output="screen", parameters=[params, face], remappings=[("image_raw", cfg("image_topic"))]),
        LifecycleNode(package="emotion_ros", executable="voice_node", name="voice_node", namespace="",
                      output="screen", parameters=[params, perception],
                      remappings=[("audio", cfg("audio_topic")), ("audio_info", cfg("audio_info_topic"))]),
        LifecycleNode(package="emotion_ros", executable="fusion_node", name="fusion_node", namespace="",
                      output="screen", parameters=[params, perception]),
    ]
    return LaunchDescription(args + network_arguments(share)
                             + [nodes_end_with_launch(), end_launch_on_failure(), check_files(["params_file"])]
                             + processes)
