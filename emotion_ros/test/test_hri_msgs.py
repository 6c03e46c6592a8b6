"""The repository's hri_msgs package against the ROS4HRI definitions it stands in for.

The expected definitions below were read from the upstream repository:
  ros4hri/hri_msgs, ROS 2 branch, commit 52bdab7fedaa92b281839c2cb221cc1e35e09f90 (package.xml version 0.8.0):
  msg/Expression.msg, msg/IdsList.msg, msg/NormalizedRegionOfInterest2D.msg.
Field order, names and types (and Expression's constants) must match for a subscriber built against the real
package to read what the nodes publish.  The .msg files are parsed here; the generated Python classes (built into
the venv by scripts/build_interfaces.sh) are checked too.
"""
from __future__ import annotations

import os
import re

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PKG = os.path.join(REPO, "hri_msgs")

# (type, name) in order, from ros4hri/hri_msgs@52bdab7fedaa92b281839c2cb221cc1e35e09f90
EXPECTED_FIELDS = {
    "Expression": [("std_msgs/Header", "header"), ("string", "expression"), ("float32", "valence"),
                   ("float32", "arousal"), ("float32", "confidence")],
    "IdsList": [("std_msgs/Header", "header"), ("string[]", "ids")],
    "NormalizedRegionOfInterest2D": [("std_msgs/Header", "header"), ("float32", "xmin"), ("float32", "ymin"),
                                     ("float32", "xmax"), ("float32", "ymax"), ("float32", "c")],
}
# (type, NAME, value) in order, from ros4hri/hri_msgs@52bdab7fedaa92b281839c2cb221cc1e35e09f90 msg/Expression.msg
EXPECTED_CONSTANTS = {
    "Expression": [("string", name.upper(), name) for name in (
        "neutral", "angry", "sad", "happy", "surprised", "disgusted", "scared", "pleading", "vulnerable",
        "despaired", "guilty", "disappointed", "embarrassed", "horrified", "skeptical", "annoyed", "furious",
        "suspicious", "rejected", "bored", "tired", "asleep", "confused", "amazed", "excited")],
    "IdsList": [],
    "NormalizedRegionOfInterest2D": [],
}
# rosidl's names for the field types in the generated classes (get_fields_and_field_types)
IDL_TYPES = {"std_msgs/Header": "std_msgs/Header", "string": "string", "float32": "float",
             "string[]": "sequence<string>"}


def parse_msg(path):
    """(fields [(type, name)], constants [(type, NAME, value)]) of a .msg file."""
    fields, constants = [], []
    with open(path) as f:
        for raw in f:
            line = raw.split("#", 1)[0].strip()  # no '#' inside these files' values
            if not line:
                continue
            m = re.fullmatch(r"(\S+)\s+([A-Za-z][A-Za-z0-9_]*)\s*=\s*(.*)", line)
            if m:
                typ, name, value = m.groups()
                if typ == "string":
                    value = value.strip()
                    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
                        value = value[1:-1]
                constants.append((typ, name, value))
                continue
            parts = line.split()
            assert len(parts) == 2, f"{path}: cannot parse {raw!r}"
            fields.append((parts[0], parts[1]))
    return fields, constants


@pytest.mark.parametrize("name", sorted(EXPECTED_FIELDS))
def test_msg_file_fields_and_constants_match_upstream(name):
    fields, constants = parse_msg(os.path.join(PKG, "msg", f"{name}.msg"))
    assert fields == EXPECTED_FIELDS[name]
    assert constants == EXPECTED_CONSTANTS[name]


def test_package_builds_exactly_these_messages_and_is_colcon_ignored():
    with open(os.path.join(PKG, "CMakeLists.txt")) as f:
        cmake = f.read()
    assert re.search(r"project\(hri_msgs\)", cmake)
    assert sorted(re.findall(r'"msg/(\w+)\.msg"', cmake)) == sorted(EXPECTED_FIELDS)
    assert sorted(os.listdir(os.path.join(PKG, "msg"))) == sorted(f"{n}.msg" for n in EXPECTED_FIELDS)
    with open(os.path.join(PKG, "package.xml")) as f:
        assert "<name>hri_msgs</name>" in f.read()
    # a workspace with the real ros4hri/hri_msgs must build that one, not this stand-in
    assert os.path.isfile(os.path.join(PKG, "COLCON_IGNORE"))


@pytest.mark.parametrize("name", sorted(EXPECTED_FIELDS))
def test_generated_python_classes_have_the_fields_and_constants(name):
    import hri_msgs.msg
    cls = getattr(hri_msgs.msg, name)
    assert cls.get_fields_and_field_types() == {n: IDL_TYPES[t] for t, n in EXPECTED_FIELDS[name]}
    for _typ, const, value in EXPECTED_CONSTANTS[name]:
        assert getattr(cls, const) == value
    msg = cls()
    for _t, field in EXPECTED_FIELDS[name]:
        assert hasattr(msg, field)


def test_every_label_maps_to_an_expression_constant():
    """The vocabulary meets ROS4HRI in one table (core.labels.HRI_EXPRESSION)."""
    from hri_msgs.msg import Expression
    from emotion_ros.core.labels import HRI_EXPRESSION, LABELS
    constants = {v for _t, _n, v in EXPECTED_CONSTANTS["Expression"]}
    assert set(HRI_EXPRESSION) == set(LABELS)
    assert set(HRI_EXPRESSION.values()) <= constants
    assert HRI_EXPRESSION["scared"] == Expression.SCARED and HRI_EXPRESSION["angry"] == Expression.ANGRY
