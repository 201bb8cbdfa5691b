#!/usr/bin/env bash
# EgoSchema 500-question subset (answers public; the full set needs the online server). Not in the paper.
# Usage: scripts/eval/egoschema.sh MODEL_DIR [lmms-eval args]; settings and env vars: scripts/eval/_run.sh.
exec "$(dirname "$0")/_run.sh" egoschema_subset "$@"
