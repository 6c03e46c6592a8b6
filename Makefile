# emotion_ros: `make setup` (from nothing: system packages, venv, deps, interfaces, package), `make test`,
# `make demo`, `make bench`. Environment (AMENT_PREFIX_PATH, Fast DDS profile, ROS_HOME) comes from scripts/env.sh.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
ROOT := $(abspath $(dir $(lastword $(MAKEFILE_LIST))))
export EMOTION_ROS_VENV ?= $(ROOT)/.venv
ENV := source $(ROOT)/scripts/env.sh
PYTEST_ARGS ?=
DEMO_ARGS ?=
BENCH_ARGS ?=

.PHONY: all setup test demo bench clean help

all: test

help:
	@echo "make setup   install everything into .venv (idempotent; quick when done)"
	@echo "make test    setup + pytest over emotion_ros/test   (PYTEST_ARGS='-k convert' to select)"
	@echo "make demo    setup + emotion-demo $(DEMO_ARGS)"
	@echo "make bench   setup + emotion-bench $(BENCH_ARGS)"
	@echo "make clean   remove build outputs and caches (keeps .venv)"

setup:
	@$(ROOT)/scripts/setup.sh

# Each test session: its own ROS_HOME (logs) and a random ROS_DOMAIN_ID, so concurrent sessions do not cross-talk.
test: setup
	@$(ENV); \
	export ROS_HOME="$$(mktemp -d /tmp/emotion_ros-test-XXXXXX)"; \
	export ROS_DOMAIN_ID="$${ROS_DOMAIN_ID:-$$(( RANDOM % 200 + 1 ))}"; \
	trap 'rm -rf "$$ROS_HOME"' EXIT; \
	cd $(ROOT)/emotion_ros && "$$EMOTION_ROS_VENV/bin/python" -m pytest test -q -p no:cacheprovider $(PYTEST_ARGS)

demo: setup
	@$(ENV); emotion-demo $(DEMO_ARGS)

bench: setup
	@$(ENV); emotion-bench $(BENCH_ARGS)

clean:
	rm -rf $(ROOT)/build $(ROOT)/.cache $(ROOT)/log $(ROOT)/install
	find $(ROOT)/emotion_ros -name __pycache__ -type d -prune -exec rm -rf {} +
	rm -rf $(ROOT)/emotion_ros/.pytest_cache $(ROOT)/emotion_ros/*.egg-info
	@echo "kept $(EMOTION_ROS_VENV) (remove it by hand for a from-scratch setup)"
