import os
from glob import glob

from setuptools import find_packages, setup

package_name = "emotion_ros"


def files(pattern):
    return [f for f in glob(pattern) if os.path.isfile(f)]


setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(exclude=["test"]),
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
        (os.path.join("share", package_name, "launch"), files("launch/*.py")),
        (os.path.join("share", package_name, "config"), files("config/*")),
        (os.path.join("share", package_name, "models"), files("models/*")),
    ],
    include_package_data=True,
    install_requires=["setuptools"],
    zip_safe=False,
    maintainer="emotion_ros developers",
    maintainer_email="emotion_ros@example.com",
    description="Face and voice emotion recognition, fusion and behaviour for social robots on ROS 2.",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            # nodes (ros2 run emotion_ros <name>)
            "camera_node = emotion_ros.nodes.camera:main",
            "microphone_node = emotion_ros.nodes.microphone:main",
            "face_node = emotion_ros.nodes.face:main",
            "voice_node = emotion_ros.nodes.voice:main",
            "fusion_node = emotion_ros.nodes.fusion:main",
            "behaviour_node = emotion_ros.nodes.behaviour:main",
            "pipeline = emotion_ros.nodes.pipeline:main",
            # offline tools
            "emotion-train = emotion_ros.training.cli:train_main",
            "emotion-eval = emotion_ros.training.evaluate:main",
            "emotion-bag = emotion_ros.tools.bag:main",
            "emotion-bench = emotion_ros.tools.bench:main",
            "emotion-demo = emotion_ros.tools.demo:main",
            "emotion-view = emotion_ros.tools.view:main",
        ],
    },
)
