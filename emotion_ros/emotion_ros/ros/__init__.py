"""rclpy adapters of emotion_ros: message conversion (convert), parameters / QoS / logs / diagnostics (node_utils)
and the node runner (lifecycle). Importing this package makes the venv's ament index visible
(``AMENT_PREFIX_PATH``), so ``.venv/bin/<entry point>`` works without sourcing anything."""

from emotion_ros.env import ensure_ament_prefix as _ensure_ament_prefix

_ensure_ament_prefix()
