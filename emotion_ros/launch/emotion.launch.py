"""Start the emotion_ros graph.

  ros2 launch emotion_ros emotion.launch.py                       # camera 0 + default microphone
  ros2 launch emotion_ros emotion.launch.py video:=clip.mp4 audio:=clip.wav
  ros2 launch emotion_ros emotion.launch.py camera:=false microphone:=false   # use your own image_raw / audio
  ros2 launch emotion_ros emotion.launch.py device:=cuda params_file:=/path/my.yaml record:=true bag:=/tmp/session

Perception and fusion nodes are lifecycle nodes; ``autostart: true`` (set here) drives them
through configure and activate at start-up.  Use ``ros2 lifecycle set /face_node deactivate``
to pause one without killing it.
"""
import os
import sys

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess, SetEnvironmentVariable
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PythonExpression
from launch_ros.actions import Node


def generate_launch_description():
    share = get_package_share_directory("emotion_ros")
    cfg = LaunchConfiguration
    args = [
        DeclareLaunchArgument("params_file", default_value=os.path.join(share, "config", "emotion.yaml"),
                              description="parameters of every node"),
        DeclareLaunchArgument("rules_file", default_value=os.path.join(share, "config", "behaviour_rules.yaml"),
                              description="behaviour rule table"),
        DeclareLaunchArgument("device", default_value="auto", description="auto | cpu | cuda"),
        DeclareLaunchArgument("camera", default_value="true", description="start the camera source node"),
        DeclareLaunchArgument("video", default_value="0",
                              description="camera source: device index, video file or GStreamer pipeline"),
        DeclareLaunchArgument("microphone", default_value="true", description="start the microphone source node"),
        DeclareLaunchArgument("audio", default_value="",
                              description="audio file played as if it were the microphone (empty: sound card)"),
        DeclareLaunchArgument("image_topic", default_value="image_raw"),
        DeclareLaunchArgument("audio_topic", default_value="audio"),
        DeclareLaunchArgument("audio_info_topic", default_value="audio_info"),
        DeclareLaunchArgument("record", default_value="false", description="record a rosbag of the session"),
        DeclareLaunchArgument("bag", default_value="emotion_session", description="bag folder when record:=true"),
        DeclareLaunchArgument("shm_transport", default_value="true",
                              description="Fast DDS shared-memory transport profile for large images"),
    ]
    params = cfg("params_file")
    image_remap = [("image_raw", cfg("image_topic"))]
    audio_remap = [("audio", cfg("audio_topic")), ("audio_info", cfg("audio_info_topic"))]
    shm = SetEnvironmentVariable(
        "FASTDDS_DEFAULT_PROFILES_FILE", os.path.join(share, "config", "fastdds_shm.xml"),
        condition=IfCondition(cfg("shm_transport")))
    nodes = [
        Node(package="emotion_ros", executable="camera_node", name="camera_node", output="screen",
             parameters=[params, {"source": cfg("video")}], remappings=image_remap,
             condition=IfCondition(cfg("camera"))),
        Node(package="emotion_ros", executable="microphone_node", name="microphone_node", output="screen",
             parameters=[params, {"file": cfg("audio")}], remappings=audio_remap,
             condition=IfCondition(cfg("microphone"))),
        Node(package="emotion_ros", executable="face_node", name="face_node", output="screen",
             parameters=[params, {"device": cfg("device"), "autostart": True}], remappings=image_remap),
        Node(package="emotion_ros", executable="voice_node", name="voice_node", output="screen",
             parameters=[params, {"device": cfg("device"), "autostart": True}], remappings=audio_remap),
        Node(package="emotion_ros", executable="fusion_node", name="fusion_node", output="screen",
             parameters=[params, {"device": cfg("device"), "autostart": True}]),
        Node(package="emotion_ros", executable="behaviour_node", name="behaviour_node", output="screen",
             parameters=[params, {"rules_file": cfg("rules_file")}]),
        ExecuteProcess(
            cmd=[sys.executable, "-m", "emotion_ros.tools.bag", "record", cfg("bag"),
                 "--topics", cfg("image_topic"), cfg("audio_topic"), cfg("audio_info_topic"),
                 "emotion/faces", "emotion/voice", "emotion/state", "emotion/states", "emotion/decision"],
            output="screen", condition=IfCondition(PythonExpression(["'", cfg("record"), "' == 'true'"]))),
    ]
    return LaunchDescription(args + [shm] + nodes)
