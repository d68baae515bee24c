#!/usr/bin/env bash
# Session 32 call 4: scripts/device-final/s32-c3.sh with CHUNKED=flex (see there).
CHUNKED=flex exec bash "$(dirname "$0")/s32-c3.sh"
