#!/usr/bin/env bash
# Session 32 call 6: scripts/device-final/s32-c3.sh with CHUNKED=noflex WALK=1 (see there).
CHUNKED=noflex WALK=1 exec bash "$(dirname "$0")/s32-c3.sh"
