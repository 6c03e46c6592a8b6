"""Shared parts of ``emotion-bag``: the type store, bag opening and checks, errors, output guards.

Nothing here imports rclpy: ``from-media`` and ``evaluate`` run without a ROS graph.
"""

from __future__ import annotations

import importlib
import os
import shutil
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

#: Topics recorded by default (relative names, resolved in the recorder's namespace).
DEFAULT_TOPICS: Tuple[str, ...] = (
    "image_raw", "audio", "audio_info",
    "emotion/faces", "emotion/voice", "emotion/state", "emotion/states", "emotion/decision",
)

#: Message types of the default topics (ARCHITECTURE.md).
KNOWN_TYPES: Dict[str, str] = {
    "image_raw": "sensor_msgs/msg/Image",
    "audio": "audio_common_msgs/msg/AudioDataStamped",
    "audio_info": "audio_common_msgs/msg/AudioInfo",
    "emotion/faces": "emotion_msgs/msg/FaceEmotionArray",
    "emotion/voice": "emotion_msgs/msg/VoiceEmotion",
    "emotion/state": "emotion_msgs/msg/EmotionState",
    "emotion/states": "emotion_msgs/msg/EmotionState",
    "emotion/decision": "emotion_msgs/msg/BehaviourDecision",
    "emotion/say": "std_msgs/msg/String",
    "emotion/expression": "std_msgs/msg/String",
    "clock": "rosgraph_msgs/msg/Clock",
}

#: Interface packages of this repository whose .msg files are registered into the type store.
CUSTOM_PACKAGES: Tuple[str, ...] = ("emotion_msgs", "audio_common_msgs")

BAG_VERSION = 9  # rosbag2 metadata version written by Jazzy and Kilted


class BagError(Exception):
    """A problem with a bag, a media file, a labels file or an output path; ``main`` prints it and exits 2."""


# ---------------------------------------------------------------------------------------------------------------
# Type store
# ---------------------------------------------------------------------------------------------------------------

def _repo_root() -> Path:
    # .../<repo>/emotion_ros/emotion_ros/tools/bag_common.py -> <repo>
    return Path(__file__).resolve().parents[3]


def msg_dirs(package: str) -> List[Path]:
    """Directories that may hold ``<package>``'s .msg files: the installed share (every AMENT_PREFIX_PATH entry and
    this interpreter's prefix), then the source tree of this repository."""
    import sys

    prefixes = [p for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    prefixes.append(sys.prefix)
    out: List[Path] = []
    for prefix in prefixes:
        out.append(Path(prefix) / "share" / package / "msg")
    out.append(_repo_root() / package / "msg")
    seen, uniq = set(), []
    for d in out:
        key = str(d.resolve()) if d.exists() else str(d)
        if key not in seen and d.is_dir():
            seen.add(key)
            uniq.append(d)
    return uniq


_TYPESTORE = None


def typestore():
    """A rosbags type store: the running ROS 2 distribution's standard types (Kilted or Jazzy; compat.rosbags_store)
    plus emotion_msgs/* and audio_common_msgs/* read from their .msg files (installed share first, else this
    repository's sources)."""
    global _TYPESTORE
    if _TYPESTORE is not None:
        return _TYPESTORE
    from rosbags.typesys import get_types_from_msg, get_typestore

    from emotion_ros.ros.compat import rosbags_store

    store = get_typestore(rosbags_store())
    types = {}
    for pkg in CUSTOM_PACKAGES:
        dirs = msg_dirs(pkg)
        if not dirs:
            continue
        for f in sorted(dirs[0].glob("*.msg")):
            types.update(get_types_from_msg(f.read_text(encoding="utf-8"), f"{pkg}/msg/{f.stem}"))
    store.register(types)
    _TYPESTORE = store
    return store


def knows_type(msgtype: str) -> bool:
    """True when the type store has (or can load from an installed share/<pkg>/msg/*.msg) ``msgtype``."""
    store = typestore()
    if msgtype in store.fielddefs:
        return True
    return _load_package_types(msgtype.split("/")[0], set()) and msgtype in store.fielddefs


def _load_package_types(pkg: str, seen: set) -> bool:
    """Register every .msg of an installed interface package (and, once, the packages it refers to)."""
    import re

    from rosbags.typesys import get_types_from_msg

    if pkg in seen:
        return False
    seen.add(pkg)
    dirs = msg_dirs(pkg)
    if not dirs:
        return False
    store = typestore()
    types = {}
    for f in sorted(dirs[0].glob("*.msg")):
        text = f.read_text(encoding="utf-8")
        types.update(get_types_from_msg(text, f"{pkg}/msg/{f.stem}"))
        for dep in set(re.findall(r"^\s*([A-Za-z][\w]*)/(?:msg/)?[A-Z]\w*", text, re.M)):
            if dep != pkg:
                _load_package_types(dep, seen)
    try:
        store.register({k: v for k, v in types.items() if k not in store.fielddefs})
    except Exception:
        return False
    return True


def import_msg_class(msgtype: str):
    """``pkg/msg/Name`` -> the generated Python class (needs the interface package installed)."""
    parts = msgtype.split("/")
    if len(parts) == 2:
        parts = [parts[0], "msg", parts[1]]
    if len(parts) != 3:
        raise BagError(f"not a ROS 2 message type name: {msgtype!r}")
    pkg, kind, name = parts
    try:
        return getattr(importlib.import_module(f"{pkg}.{kind}"), name)
    except (ImportError, AttributeError) as exc:
        raise BagError(f"message type {msgtype} is not installed in this Python environment ({exc})") from None


# ---------------------------------------------------------------------------------------------------------------
# Output guards
# ---------------------------------------------------------------------------------------------------------------

def check_output(path: Optional[str], force: bool, what: str = "output") -> None:
    """Refuse to overwrite an existing file or directory unless ``force`` (then remove it)."""
    if not path:
        return
    p = Path(path)
    if p.exists() or p.is_symlink():
        if not force:
            raise BagError(f"{what} {str(p)!r} exists already; not overwriting it (use --force to replace it)")
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()
    parent = p.resolve().parent
    if not parent.is_dir():
        raise BagError(f"{what} {str(p)!r}: directory {str(parent)!r} does not exist")


# ---------------------------------------------------------------------------------------------------------------
# Reading bags
# ---------------------------------------------------------------------------------------------------------------

@dataclass
class TopicSummary:
    name: str
    msgtype: str
    count: int


def normalise_topic(name: str) -> str:
    """``image_raw`` / ``/image_raw`` -> ``/image_raw`` (bags store absolute names)."""
    name = name.strip()
    return name if name.startswith("/") else "/" + name


class BagFile:
    """A rosbag2 opened with rosbags, with errors turned into :class:`BagError`.

    ``path``: a bag directory (with metadata.yaml) or a bare .mcap / .db3 file.
    """

    def __init__(self, path: str):
        from rosbags.rosbag2 import Reader
        from rosbags.rosbag2.errors import ReaderError

        self.path = str(path)
        p = Path(path)
        if not p.exists():
            raise BagError(f"bag {self.path!r} does not exist")
        if p.is_dir() and not (p / "metadata.yaml").is_file():
            raise BagError(f"{self.path!r} is not a rosbag2: directory without metadata.yaml")
        try:
            self.reader = Reader(p)
            self.reader.open()
        except (ReaderError, FileNotFoundError, OSError, ValueError, KeyError, TypeError) as exc:
            raise BagError(f"cannot read bag {self.path!r} (corrupt, truncated or not a rosbag2): {exc}") from None
        except Exception as exc:  # storage libraries raise their own types for corrupt files
            raise BagError(f"cannot read bag {self.path!r} (corrupt or not a rosbag2?): "
                           f"{type(exc).__name__}: {exc}") from None
        self._register_bag_types()

    def _register_bag_types(self) -> None:
        """Register types whose definitions the bag carries but the type store lacks (foreign bags)."""
        from rosbags.typesys import get_types_from_idl, get_types_from_msg

        store = typestore()
        for conn in self.reader.connections:
            if conn.msgtype in store.fielddefs or not conn.msgdef or not conn.msgdef.data:
                continue
            try:
                if conn.msgdef.format.name == "IDL":
                    types = get_types_from_idl(conn.msgdef.data)
                else:
                    types = {}
                    sep = "=" * 80 + "\n"
                    parts = conn.msgdef.data.split(sep)
                    types.update(get_types_from_msg(parts[0], conn.msgtype))
                    for part in parts[1:]:
                        head, _, body = part.partition("\n")
                        name = head.replace("MSG: ", "").strip()
                        if "/msg/" not in name and name.count("/") == 1:
                            name = name.replace("/", "/msg/")
                        types.update(get_types_from_msg(body, name))
                store.register({k: v for k, v in types.items() if k not in store.fielddefs})
            except Exception:  # an unparsable definition only matters if that topic is read
                pass

    def close(self) -> None:
        try:
            self.reader.close()
        except Exception:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def start_ns(self) -> int:
        return int(self.reader.start_time) if self.reader.message_count else 0

    @property
    def end_ns(self) -> int:
        return int(self.reader.end_time) if self.reader.message_count else 0

    @property
    def duration_s(self) -> float:
        return max(0, self.end_ns - self.start_ns) * 1e-9

    @property
    def message_count(self) -> int:
        return int(self.reader.message_count)

    def topics(self) -> Dict[str, TopicSummary]:
        out: Dict[str, TopicSummary] = {}
        for conn in self.reader.connections:
            s = out.get(conn.topic)
            if s is None:
                out[conn.topic] = TopicSummary(conn.topic, conn.msgtype, int(conn.msgcount))
            else:
                s.count += int(conn.msgcount)
                if s.msgtype != conn.msgtype:
                    s.msgtype = s.msgtype + "|" + conn.msgtype
        return out

    def connections_for(self, topics: Optional[Iterable[str]] = None):
        conns = list(self.reader.connections)
        if topics is None:
            return conns
        wanted = {normalise_topic(t) for t in topics}
        return [c for c in conns if c.topic in wanted]

    def check_topic_type(self, topic: str, expected: Sequence[str]) -> Optional[str]:
        """The type of ``topic`` in the bag, None when absent; BagError when it is not one of ``expected``."""
        info = self.topics().get(normalise_topic(topic))
        if info is None:
            return None
        if info.msgtype not in expected:
            raise BagError(f"bag {self.path!r}: topic {info.name} holds {info.msgtype}, "
                           f"expected {' or '.join(expected)}")
        return info.msgtype

    def messages(self, connections=None):
        """Yield (connection, receive timestamp ns, raw CDR bytes) in time order; storage errors -> BagError."""
        try:
            for conn, ts, raw in self.reader.messages(connections=connections or self.reader.connections):
                yield conn, int(ts), raw
        except BagError:
            raise
        except Exception as exc:
            raise BagError(f"bag {self.path!r} is corrupt or truncated: {type(exc).__name__}: {exc}") from None

    def deserialize(self, raw: bytes, msgtype: str, topic: str = ""):
        try:
            return typestore().deserialize_cdr(raw, msgtype)
        except Exception as exc:
            where = f" on {topic}" if topic else ""
            raise BagError(f"bag {self.path!r}: cannot decode a {msgtype} message{where}: "
                           f"{type(exc).__name__}: {exc}") from None


def stop_on_signals(stop: threading.Event) -> Dict[int, object]:
    """SIGINT and SIGTERM set ``stop``; from the first one on, both are ignored (SIG_IGN, at the OS level) until
    :func:`end_signal_handling`. A Python handler runs between any two bytecodes, also inside itself: with a handler
    that only called ``stop.set()``, a storm of SIGINTs (one every 2 ms, as a test sends them) nested handler in
    handler inside ``Event.set`` until RecursionError, and the recorder exited 1 after 30 s (seen 2026-12-03).
    Returns the replaced handlers (none when not called from the main thread, where Python refuses handlers)."""
    def on_signal(_sig, _frm):
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, signal.SIG_IGN)
        stop.set()
    previous: Dict[int, object] = {}
    for s in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[s] = signal.signal(s, on_signal)
        except ValueError:  # not the main thread
            pass
    return previous


def end_signal_handling(previous: Dict[int, object], signalled: bool) -> None:
    """Put back the SIGINT/SIGTERM handlers ``record``/``play`` replaced, or, when a signal stopped them, ignore
    those signals from here to the exit (SIGKILL still ends the process). Ctrl-C under ``ros2 launch`` arrives twice
    (the terminal's SIGINT to the process group, then launch's own); a second one after the bag was closed met
    Python's handler, or SIG_DFL once the interpreter was finalizing, and the process died with -2 ("process has
    died", seen in CI). SIG_IGN, unlike a Python handler, survives finalization."""
    for sig, handler in previous.items():
        signal.signal(sig, signal.SIG_IGN if signalled else handler)


def stamp_ns(stamp) -> int:
    """A rosbags or rclpy ``builtin_interfaces/Time`` -> integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


# ---------------------------------------------------------------------------------------------------------------
# Writing bags
# ---------------------------------------------------------------------------------------------------------------

STORAGES = ("mcap", "sqlite3")

# rosbag2 writes "infinite" durations as the largest int64 nanoseconds split into sec / nsec.
_INFINITE = (9223372036, 854775807)


def make_qos(reliable: bool = True, transient_local: bool = False, depth: int = 10):
    """A rosbags ``Qos`` tuple for a topic's offered_qos_profiles entry in metadata.yaml."""
    from rosbags.interfaces import (Qos, QosDurability, QosHistory, QosLiveliness, QosReliability,
                                    QosTime)

    inf = QosTime(*_INFINITE)
    return Qos(history=QosHistory.KEEP_LAST, depth=int(depth),
               reliability=QosReliability.RELIABLE if reliable else QosReliability.BEST_EFFORT,
               durability=QosDurability.TRANSIENT_LOCAL if transient_local else QosDurability.VOLATILE,
               deadline=inf, lifespan=inf, liveliness=QosLiveliness.AUTOMATIC,
               liveliness_lease_duration=inf, avoid_ros_namespace_conventions=False)


class BagWriter:
    """rosbags ``Writer`` (rosbag2 version 9, mcap or sqlite3) with connections made from the type store.

    ``write(topic, msgtype, t_ns, raw)`` adds the connection on first use. Not thread-safe: use from one thread.
    """

    def __init__(self, path: str, storage: str = "mcap", force: bool = False):
        from rosbags.rosbag2 import StoragePlugin, Writer
        from rosbags.rosbag2.errors import WriterError

        if storage not in STORAGES:
            raise BagError(f"unknown storage {storage!r} (choose {', '.join(STORAGES)})")
        check_output(path, force, "bag")
        plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
        try:
            self.writer = Writer(path, version=BAG_VERSION, storage_plugin=plugin)
            self.writer.open()
        except (WriterError, OSError) as exc:
            raise BagError(f"cannot create bag {path!r}: {exc}") from None
        self.path = path
        self.connections: Dict[Tuple[str, str], object] = {}
        self.counts: Dict[str, int] = {}
        self.closed = False

    def add_topic(self, topic: str, msgtype: str, qos=None):
        key = (normalise_topic(topic), msgtype)
        conn = self.connections.get(key)
        if conn is None:
            if not knows_type(msgtype):
                raise BagError(f"no message definition for {msgtype} (topic {key[0]}); cannot record it")
            conn = self.writer.add_connection(key[0], msgtype, typestore=typestore(),
                                              offered_qos_profiles=[qos] if qos is not None else [make_qos()])
            self.connections[key] = conn
            self.counts.setdefault(key[0], 0)
        return conn

    def write(self, topic: str, msgtype: str, t_ns: int, raw: bytes) -> None:
        conn = self.add_topic(topic, msgtype)
        self.writer.write(conn, int(t_ns), raw)
        self.counts[normalise_topic(topic)] += 1

    def write_msg(self, topic: str, msgtype: str, t_ns: int, msg) -> None:
        self.write(topic, msgtype, t_ns, bytes(typestore().serialize_cdr(msg, msgtype)))

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.writer.close()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:  # still leave a readable bag with what was written
            try:
                self.close()
            except Exception:
                pass
