#!/usr/bin/env bash
# Session 32 call 5: scripts/device-final/s32-c3.sh with CHUNKED=noflex (see there).
CHUNKED=noflex exec bash "$(dirname "$0")/s32-c3.sh"
