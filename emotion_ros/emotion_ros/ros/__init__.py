"""rclpy adapters of emotion_ros: message conversion (convert), parameters / QoS / logs / diagnostics (node_utils)
and the node runner (lifecycle); what differs between ROS 2 distributions is in compat. Importing this package makes
the venv's ament index visible (``AMENT_PREFIX_PATH``), so ``.venv/bin/<entry point>`` works without sourcing anything,
and names a Fast DDS profile that is set under both variable names (Kilted's Fast DDS 3 and Jazzy's Fast DDS 2 read
different ones; compat.mirror_fastdds_profile)."""

from emotion_ros.env import ensure_ament_prefix as _ensure_ament_prefix
from emotion_ros.ros.compat import mirror_fastdds_profile as _mirror_fastdds_profile

_ensure_ament_prefix()
_mirror_fastdds_profile()
