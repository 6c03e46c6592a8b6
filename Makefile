# emotion_ros: `make setup` (from nothing: system packages, venv, deps, interfaces, package), `make test`,
# `make demo`, `make bench`. Environment (AMENT_PREFIX_PATH, Fast DDS profile, ROS_HOME) comes from scripts/env.sh.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
ROOT := $(abspath $(dir $(lastword $(MAKEFILE_LIST))))
# ROS 2 distribution of the venv: kilted (default, .venv) or jazzy (LTS, .venv-jazzy); one distribution per venv
ROS_DISTRO ?= kilted
export ROS_DISTRO
export EMOTION_ROS_VENV ?= $(ROOT)/$(if $(filter kilted,$(ROS_DISTRO)),.venv,.venv-$(ROS_DISTRO))
ENV := source $(ROOT)/scripts/env.sh
TESTS ?= test
# what CI runs on Jazzy (make test-jazzy): the end-to-end graph, the message and transport tests, the distro shim
JAZZY_VENV ?= $(ROOT)/.venv-jazzy
JAZZY_TESTS ?= test/test_ros_convert.py test/test_ros_compat.py test/test_ros_transport.py test/test_graph_e2e.py \
	$(patsubst $(ROOT)/emotion_ros/%,%,$(sort $(wildcard $(ROOT)/emotion_ros/test/test_hri*.py)))
PYTEST_ARGS ?=
DEMO_ARGS ?=
BENCH_ARGS ?=

.PHONY: all setup test test-jazzy demo bench clean help

all: test

help:
	@echo "make setup   install everything into .venv (idempotent; quick when done)"
	@echo "make test    setup + pytest over emotion_ros/test   (PYTEST_ARGS='-k convert' to select)"
	@echo "make test-jazzy  setup of .venv-jazzy (ROS_DISTRO=jazzy) + the Jazzy tests: $(JAZZY_TESTS)"
	@echo "ROS_DISTRO=jazzy with setup/test/demo/bench: the Jazzy venv .venv-jazzy instead of .venv (Kilted)"
	@echo "make demo    setup + emotion-demo $(DEMO_ARGS)"
	@echo "make bench   setup + emotion-bench $(BENCH_ARGS)"
	@echo "make clean   remove build outputs and caches (keeps .venv)"

setup:
	@$(ROOT)/scripts/setup.sh

# Each test session: its own ROS_HOME (logs) and a random ROS_DOMAIN_ID, so concurrent sessions do not cross-talk.
# The 15 slowest tests are listed at the end (CI's time).
test: setup
	@$(ENV); \
	export ROS_HOME="$$(mktemp -d /tmp/emotion_ros-test-XXXXXX)"; \
	export ROS_DOMAIN_ID="$${ROS_DOMAIN_ID:-$$(( RANDOM % 200 + 1 ))}"; \
	trap 'rm -rf "$$ROS_HOME"' EXIT; \
	cd $(ROOT)/emotion_ros && "$$EMOTION_ROS_VENV/bin/python" -m pytest $(TESTS) -q -p no:cacheprovider --durations=15 $(PYTEST_ARGS)

# CI's Jazzy stage: the Jazzy venv (from nothing 5.5-8 min on 2 busy cores, then ~1 s) and JAZZY_TESTS in it (~75 s)
test-jazzy:
	@$(MAKE) --no-print-directory test ROS_DISTRO=jazzy EMOTION_ROS_VENV=$(JAZZY_VENV) TESTS="$(JAZZY_TESTS)"

demo: setup
	@$(ENV); emotion-demo $(DEMO_ARGS)

bench: setup
	@$(ENV); emotion-bench $(BENCH_ARGS)

clean:
	rm -rf $(ROOT)/build $(ROOT)/.cache $(ROOT)/log $(ROOT)/install
	find $(ROOT)/emotion_ros -name __pycache__ -type d -prune -exec rm -rf {} +
	rm -rf $(ROOT)/emotion_ros/.pytest_cache $(ROOT)/emotion_ros/*.egg-info
	@echo "kept $(EMOTION_ROS_VENV) (remove it by hand for a from-scratch setup)"
