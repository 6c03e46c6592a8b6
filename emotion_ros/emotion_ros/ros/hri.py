"""ROS4HRI (REP-155) output of the face and fusion nodes (their ``hri`` parameter): hri_msgs messages, QoS and the
publishers that exist per face / person id.

Imported only when ``hri`` is on, so that the nodes run without the hri_msgs package otherwise; ``require()`` says
in one line what is missing.  QoS follows the ROS4HRI implementations (hri_face_detect publishes with depth 1,
reliable; libhri/pyhri subscribe with the system defaults, reliable and volatile; hri_person_manager latches the
person's ``face_id``):

- ``/humans/faces/tracked``: reliable, transient local, depth 1 (a late subscriber gets the current list; matches
  volatile and transient-local subscribers alike);
- per-face / per-person topics: reliable, volatile, depth 1;
- ``/humans/persons/<id>/face_id`` is read with reliable, transient local (it is latched).
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Tuple

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

from emotion_ros.core.errors import InputError
from emotion_ros.core.hri import HriExpression, IdSet, normalized_roi

try:
    from hri_msgs.msg import Expression, IdsList, NormalizedRegionOfInterest2D
    _IMPORT_ERROR: Optional[str] = None
except ImportError as exc:  # pragma: no cover - exercised where hri_msgs is missing
    Expression = IdsList = NormalizedRegionOfInterest2D = None
    _IMPORT_ERROR = str(exc)


def require() -> None:
    """Raise ImportError with one line naming the package when hri_msgs is not installed."""
    if _IMPORT_ERROR is not None:
        raise ImportError(f"hri is true but the hri_msgs package cannot be imported ({_IMPORT_ERROR}): install "
                          "ros4hri/hri_msgs (or ros-<distro>-hri-msgs), or make setup, which builds the repository's "
                          "hri_msgs into the venv")


def tracked_qos() -> QoSProfile:
    """/humans/*/tracked: reliable, transient local, depth 1."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL)


def per_id_qos() -> QoSProfile:
    """/humans/faces/<id>/..., /humans/persons/<id>/expression: reliable, volatile, depth 1."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.VOLATILE)


def latched_reader_qos() -> QoSProfile:
    """Reading a latched REP-155 topic (/humans/persons/<id>/face_id): reliable, transient local, depth 1."""
    return tracked_qos()


def ids_list(header, ids: Sequence[str]):
    """An IdsList of ``ids`` with ``header`` (None: an empty header)."""
    msg = IdsList()
    if header is not None:
        msg.header = header
    msg.ids = [str(i) for i in ids]
    return msg


def expression_msg(header, e: HriExpression):
    msg = Expression()
    msg.header = header
    msg.expression = e.expression
    msg.valence = float(e.valence)
    msg.arousal = float(e.arousal)
    msg.confidence = float(e.confidence)
    return msg


def roi_msg(header, box: Sequence[float], width: int, height: int, confidence: float):
    msg = NormalizedRegionOfInterest2D()
    msg.header = header
    msg.xmin, msg.ymin, msg.xmax, msg.ymax = normalized_roi(box, width, height)
    msg.c = float(min(1.0, max(0.0, confidence)))
    return msg


class PerIdPublishers:
    """Publishers of ``topic_of(id, leaf)`` for each live id and each leaf of ``leaves`` ({leaf: message type}):
    ``sync(ids)`` creates those of new ids and destroys those of ids that are gone (REP-155: a face's topics
    exist while it is tracked).  An id that cannot be part of a topic name is skipped (``rejected``)."""

    def __init__(self, node, topic_of: Callable[[str, str], str], leaves: Dict[str, type],
                 qos: Optional[QoSProfile] = None):
        self.node = node
        self.topic_of = topic_of
        self.leaves = dict(leaves)
        self.qos = qos or per_id_qos()
        self.live = IdSet()
        self.pubs: Dict[str, Dict[str, object]] = {}
        self.rejected: List[str] = []

    def sync(self, ids: Sequence[str]) -> Tuple[List[str], List[str]]:
        added, removed = self.live.update(ids)
        for i in removed:
            self._destroy(i)
        self.rejected = []
        for i in added:
            try:
                topics = {leaf: self.topic_of(i, leaf) for leaf in self.leaves}
            except InputError:
                self.rejected.append(i)
                continue
            self.pubs[i] = {leaf: self.node.create_publisher(self.leaves[leaf], topic, self.qos)
                            for leaf, topic in topics.items()}
        return added, removed

    def get(self, ident: str, leaf: str):
        return self.pubs.get(ident, {}).get(leaf)

    def _destroy(self, ident: str) -> None:
        for pub in self.pubs.pop(ident, {}).values():
            try:
                self.node.destroy_publisher(pub)
            except Exception:  # noqa: BLE001 - the node is going away already
                pass

    def destroy_all(self) -> None:
        for i in list(self.pubs):
            self._destroy(i)
        self.live.clear()
